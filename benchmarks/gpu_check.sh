#!/usr/bin/env bash
# The GPU check: everything reidbench does on a GPU, run once on one H100 or H200 in under 8
# minutes, its figures written to a folder. Needs torch, torchvision, timm, pyarrow, tabulate and
# nvidia-ml-py installed there; no network (random weights, synthetic data).
#
#   benchmarks/gpu_check.sh [--out DIR] [--dry-run]
#
#   --out DIR    where the figures go (default: gpu-check/<date>-<host>)
#   --dry-run    print the steps and their commands; run nothing, write nothing
#
# Steps (each with its own time limit; a failing step is recorded and the next one runs):
#   1 cuda-tests   the test suite's CUDA tests (the tests that skip without a GPU)
#   2 throughput   benchmarks/train_throughput.py on the GPU: reidbench's loop against a bare fp32
#                  loop in one run, speed options off, then on (bf16, channels-last, torch.compile,
#                  data on the device), with NVML's SM utilisation while training.
#                  Targets on one H100: >= 1.3x the bare loop with the options on, SM >= 90 %.
#   3 profile      `reidbench profile --device cuda` for every method and variant on ResNet-50,
#                  into DIR/store/profiles/, and the throughput table they make (DIR/reports/)
#   4 evaluation   benchmarks/evaluation.py on the GPU at Market-1501 and MSMT17 size.
#                  Targets: Market-1501 evaluation within 0.1 s, MSMT17 re-ranking within 10 s.
#   5 smoke-nccl   a one-GPU cell through `reidbench run` whose process group is formed (NCCL)
#                  although it has one rank ([env] REIDBENCH_PROCESS_GROUP = "always")
#   6 two-gpus     with two GPUs or more: the 2-rank cell of step 5 (NCCL across GPUs, pre-flight
#                  and SyncBatchNorm-free DDP) and the world-size tests on CUDA; skipped otherwise
#
# DIR/summary.txt lists each step's exit status and seconds; DIR/<step>.log holds its output.
# Commit DIR/store/profiles/*.parquet to results/profiles/ and DIR/reports/throughput.* to
# reports/ (they name the device), as harness/executors/estimate.py reads them first.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="gpu-check/$(date +%Y%m%d-%H%M)-$(hostname -s)"
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (--out DIR, --dry-run)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" REIDBENCH_CACHE="$OUT/cache"

SMOKE_SPEC="$OUT/smoke-nccl.toml"
smoke_spec() {  # $1: world size
    cat <<SPEC
[grid]
name = "gpu-smoke-$1"
methods = ["baseline"]
backbones = ["resnet50"]
train_datasets = ["market1501"]

[train]
iterations = 60
ids_per_batch = 16
images_per_id = 4
num_workers = 4
precision = "bf16"

[method_options.baseline]
pretrained = false

[synthetic]
ids = 64

[resources]
world_size = $1
device = "cuda"
collective_timeout = 5

[env]
REIDBENCH_PROCESS_GROUP = "always"
SPEC
}

gpus() { nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; }

STEPS=()
LIMITS=0
step() {  # name, limit in seconds, command...
    STEPS+=("$1")
    local name=$1 limit=$2
    LIMITS=$(( LIMITS + limit ))
    shift 2
    if [ $DRY = 1 ]; then
        printf '%-14s (at most %3d s)  %s\n' "$name" "$limit" "$(printf '%q ' "$@")"
        return
    fi
    local start=$SECONDS status
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    status=$?
    echo "$name: exit $status after $(( SECONDS - start )) s (limit $limit s)" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log"
}

if [ $DRY = 1 ]; then
    echo "gpu_check.sh --dry-run: the steps, their time limits and commands (output would go to $OUT/):"
else
    mkdir -p "$OUT"
    { nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/device.txt" 2>&1
    cat "$OUT/device.txt"
    smoke_spec 1 > "$SMOKE_SPEC"
    smoke_spec 2 > "$OUT/smoke-nccl-2.toml"
fi

step cuda-tests 75 $PY -m pytest -q -rs -p no:cacheprovider -m "not slow and not slurm and not ray" -k "cuda or gpu" \
    tests/test_evaluate.py tests/test_rerank.py tests/test_profile.py tests/test_train_speed.py tests/test_device_data.py
step throughput-off 45 $PY benchmarks/train_throughput.py --device cuda --batch 64 --steps 20 --rounds 4 \
    --precision fp32 --no-channels-last --no-compile --no-data-on-device --method-steps 5
step throughput-on 105 $PY benchmarks/train_throughput.py --device cuda --batch 64 --steps 20 --rounds 4 \
    --precision bf16 --channels-last --compile --data-on-device --method-steps 5
step profile 80 $PY -m harness.cli profile --device cuda --backbones resnet50 --steps 20 --warmup 5 --store "$OUT/store"
step report 20 $PY -m harness.cli report --store "$OUT/store" --out "$OUT/reports"
step evaluation 60 $PY benchmarks/evaluation.py --device cuda --sizes market,msmt17 --reference-at market
step smoke-nccl 60 $PY -m harness.cli run "$SMOKE_SPEC" --store "$OUT/smoke-store" --reports "$OUT/smoke-reports"
if [ $DRY = 1 ] || [ "$(gpus)" -ge 2 ]; then
    step two-gpus 60 $PY -m harness.cli run "$OUT/smoke-nccl-2.toml" --store "$OUT/smoke-store" --reports "$OUT/smoke-reports"
    step world-size 60 $PY -m pytest -q -rs -p no:cacheprovider -k "cuda and world_size" tests
else
    echo "two-gpus: skipped (one GPU)" | tee -a "$OUT/summary.txt"
fi
if [ $DRY = 1 ]; then
    echo "${#STEPS[@]} steps, at most $LIMITS s in all (the last two only with two GPUs or more); nothing was run (--dry-run)."
else
    echo "figures in $OUT/ (summary.txt, one log per step, store/profiles/, reports/)"
fi
