#!/bin/bash

# Parameters
#SBATCH --account=vision
#SBATCH --array=0-1%2
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=8
#SBATCH --exclude=node7
#SBATCH --exclusive
#SBATCH --gpus-per-node=4
#SBATCH --job-name=reidbench-golden
#SBATCH --mem=64G
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=/TMP/store/slurm/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --signal=USR2@120
#SBATCH --time=120
#SBATCH --wckey=submitit

# setup
module load cuda/12.1
source .venv/bin/activate

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /TMP/store/slurm/%A_%a_%t_log.out PYTHON -u -m submitit.core._submit /TMP/store/slurm
