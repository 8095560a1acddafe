"""Submit cells to SLURM through submitit: one job array per group of cells with equal resources.

Each array task is one cell: `nodes x tasks_per_node` tasks, one DDP process each, whose rank,
world size and master address come from submitit's TorchDistributedEnvironment. The callable is
`SlurmCell`, a submitit Checkpointable around harness.cell.run_cell: on SLURM's warning signal
(time limit or preemption) every rank stops at the same step, rank 0 writes a checkpoint, and
submitit requeues the job, which resumes from it. Submission returns at once; the manifest beside
the store (harness.manifest) and the scheduler (squeue, scontrol; never sacct) tell the rest.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import submitit

from harness import checkpoint, manifest, provenance
from harness.errors import UserError
from harness.spec import Cell, Resources, SlurmConfig
from harness.store import Store

# sbatch's complaint -> the setting that caused it (spec key / command-line flag).
_SETTINGS = {
    "partition": "[slurm] partition / --partition",
    "account": "[slurm] account / --account",
    "qos": "[slurm] qos / --qos",
    "gres": "[slurm] gres or [resources] gpus_per_node / --gres, --gpus-per-node",
    "gpu": "[slurm] gres or [resources] gpus_per_node / --gres, --gpus-per-node",
    "feature": "[slurm] constraint / --constraint",
    "constraint": "[slurm] constraint / --constraint",
    "time limit": "[slurm] time / --time",
    "memory": "[slurm] mem / --mem",
    "node configuration": "[resources] nodes, world_size, gpus_per_node or [slurm] cpus_per_task, mem",
}
# squeue states in which a job still holds or waits for its place.
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}
# How the scheduler names the end of a job that left no reason of its own.
_ENDINGS = {"TIMEOUT": "time limit", "OUT_OF_MEMORY": "OOM (out of memory)", "NODE_FAIL": "node failure",
            "PREEMPTED": "preempted", "CANCELLED": "cancelled", "DEADLINE": "deadline", "BOOT_FAIL": "node boot failure"}


class SlurmCell(submitit.helpers.Checkpointable):
    """The job's callable: run the cell, recording attempts and failures in the manifest.

    submitit pickles it with its arguments; on the requeue signal its `checkpoint()` (inherited)
    resubmits the same call, and the restarted job finds the checkpoint in the cell's folder.
    """

    def __call__(self, cell_json: str, resources_json: str, store_root: str) -> None:
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        job = submitit.JobEnvironment()
        store, cell_id = Store(store_root), Cell.from_json(cell_json).id
        attempt = f"{job.job_id}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
        main = dist_env.rank == 0
        if main:
            record = manifest.read(store, cell_id) or {}
            manifest.update(store, cell_id, state="running", attempts=record.get("attempts", 0) + 1, job_id=job.job_id,
                            hostname=socket.gethostname(), started_at=provenance.now())
            store.write_state(cell_id, "running", executor="slurm", attempt=attempt, job_id=job.job_id,
                              hostname=socket.gethostname(), log_dir=record.get("stdout"))
        submitit_handler = checkpoint.listen(signal.SIGUSR2)
        try:
            from harness.cell import run_cell

            run_cell(cell_json, resources_json, store_root, "slurm", attempt)
        except checkpoint.StopRequested as stop:
            signal.signal(signal.SIGUSR2, submitit_handler)
            if main:
                manifest.update(store, cell_id, state="requeued", checkpoint_step=stop.step, requeued_at=provenance.now())
            try:
                submitit_handler(signal.SIGUSR2, None)  # rank 0: pickle this call, requeue, exit
            except submitit.core.utils.UncompletedJobError as err:
                reason = f"time limit: {err}"
                manifest.update(store, cell_id, state="failed", reason=reason, failed_at=provenance.now())
                store.write_state(cell_id, "failed", reason=reason, attempt=attempt, failed_at=provenance.now())
                raise
            for _ in range(600):  # other ranks: the requeue ends this task, unless rank 0 gave up
                if (manifest.read(store, cell_id) or {}).get("state") == "failed":
                    break
                time.sleep(1)
            raise RuntimeError("the job was not requeued after its checkpoint") from None
        except BaseException:
            state = store.read_state(cell_id) or {}
            if state.get("state") == "failed":
                manifest.update(store, cell_id, state="failed", reason=classify(state.get("reason", "")), failed_at=provenance.now())
            raise
        if main:
            manifest.update(store, cell_id, state="done", finished_at=provenance.now())


def classify(reason: str) -> str:
    """Prefix a recorded failure with its kind: OOM, NaN or code error."""
    if "OutOfMemory" in reason or "out of memory" in reason:
        return f"OOM: {reason}"
    if "non-finite" in reason:
        return f"NaN: {reason}"
    return reason if reason.startswith(("time limit", "OOM", "NaN")) else f"code error: {reason}"


# -- submission -----------------------------------------------------------------------------------


def available() -> bool:
    return shutil.which("squeue") is not None


def check_cluster() -> None:
    """A clear error before anything is submitted when there is no SLURM to talk to."""
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm needs SLURM's sbatch, which is not on PATH; run on a cluster login node "
                        "(or start a local cluster with scripts/slurm-local.sh up).")
    try:
        subprocess.run(["squeue", "-h", "-o", "%i", "-j", "0"], capture_output=True, text=True, timeout=30)
        subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=30, check=True)
    except (subprocess.SubprocessError, OSError) as err:
        raise UserError(f"the SLURM controller does not answer (sinfo: {getattr(err, 'stderr', '') or err}); "
                        f"check that slurmctld is up (scontrol ping).") from None


def max_array_size() -> int:
    """The cluster's MaxArraySize: an array holds indices 0 .. MaxArraySize - 1."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(match.group(1)) - 1 if match else 1000


def sbatch_parameters(grid: str, resources: Resources, slurm: SlurmConfig) -> dict:
    """submitit.SlurmExecutor parameters for the cells of one grid."""
    params = {
        "job_name": f"reidbench-{grid}",
        "time": slurm.time,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.tasks_per_node,
        "cpus_per_task": slurm.cpus_per_task,
        "gpus_per_node": resources.gpus_per_node or None,
        "gres": slurm.gres,
        "partition": slurm.partition,
        "account": slurm.account,
        "qos": slurm.qos,
        "constraint": slurm.constraint,
        "mem": slurm.mem,
        "setup": list(slurm.setup) or None,
        "array_parallelism": slurm.array_parallelism,
        "signal_delay_s": slurm.signal_delay_s,
        "additional_parameters": _extra(slurm.extra) or None,
        "stderr_to_stdout": True,
    }
    return {k: v for k, v in params.items() if v is not None}


def sbatch_lines(params: dict, array_size: int) -> list[str]:
    """The #SBATCH lines those parameters make (for --dry-run)."""
    skip = {"setup", "array_parallelism", "signal_delay_s", "additional_parameters", "stderr_to_stdout"}
    flags = {k: v for k, v in params.items() if k not in skip}
    flags["signal"] = f"USR2@{params['signal_delay_s']}"
    flags["array"] = f"0-{array_size - 1}%{min(array_size, params['array_parallelism'])}"
    flags.update(params.get("additional_parameters", {}))
    lines = [f"#SBATCH --{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in sorted(flags.items())]
    return lines + [f"# setup: {line}" for line in params.get("setup", [])]


def _extra(lines: Sequence[str]) -> dict:
    out = {}
    for line in lines:
        option = line.removeprefix("#SBATCH").strip().lstrip("-")
        key, sep, value = option.partition("=")
        out[key.replace("-", "_")] = value if sep else True
    return out


def submit(cells: Sequence[Cell], resources: Resources, slurm: SlurmConfig, store: Store,
           log: Callable[[str], None] = print) -> list[dict]:
    """Submit `cells` as job arrays; returns their manifest records. Non-blocking."""
    check_cluster()
    root = store.root.resolve()  # jobs may start in another working directory
    params = sbatch_parameters(cells[0].grid if cells else "grid", resources, slurm)
    executor = submitit.SlurmExecutor(folder=root / "slurm", max_num_timeout=slurm.max_requeues)
    executor.update_parameters(**params)
    chunk = max_array_size()
    resources_json = json.dumps(asdict(resources))
    records = []
    for first in range(0, len(cells), chunk):
        part = cells[first:first + chunk]
        try:  # submitit echoes sbatch's stderr; the refusal is shown once, below
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                jobs = [executor.submit(SlurmCell(), c.to_json(), resources_json, str(root)) for c in part]
        except submitit.core.utils.FailedJobError as err:
            raise UserError(refusal(str(err))) from None
        submitted = provenance.now()
        for index, (cell, job) in enumerate(zip(part, jobs)):
            array_id, _, task = job.job_id.partition("_")
            records.append(manifest.replace(
                store, cell.id, executor="slurm", grid=cell.grid, state="submitted", job_id=job.job_id,
                array_job_id=array_id, array_index=int(task or index), submitted_at=submitted,
                stdout=str(job.paths.stdout), folder=str(root / "slurm"),
            ))
            store.write_state(cell.id, "submitted", executor="slurm", job_id=job.job_id, submitted_at=submitted)
        first_id = jobs[0].job_id.partition("_")[0]
        log(f"submitted {len(part)} cell(s) as job array {first_id}" if len(part) > 1 else f"submitted 1 cell as job {first_id}")
    return records


def run_slurm(cells: Sequence[Cell], resources: Resources, store: Store, *, slurm: SlurmConfig) -> list:
    """The executor interface: submit and return; outcomes come later (`reidbench status`)."""
    submit(cells, resources, slurm, store)
    return []


def refusal(stderr: str) -> str:
    """sbatch's refusal in one line, naming the setting it is about."""
    lines = [line.strip() for line in stderr.splitlines() if "error" in line.lower()] or [stderr.strip()]
    message = lines[-1].removeprefix("sbatch: error: ")
    for line in lines:
        if "invalid" in line.lower() or "unknown" in line.lower() or "not" in line.lower():
            message = line.removeprefix("sbatch: error: ")
            break
    lower = " ".join(lines).lower()
    setting = next((name for word, name in _SETTINGS.items() if word in lower), None)
    return f"SLURM refused the job: {message}" + (f" (check {setting})" if setting else "")


# -- the scheduler's view -------------------------------------------------------------------------


def scheduler_states(job_ids: Sequence[str] = ()) -> dict[str, tuple[str, str]]:
    """job id -> (state, reason) for the jobs squeue still knows (pending, running and recently ended)."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=60)
    states = {}
    for line in out.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        states[job_id.strip()] = (state.strip(), reason.strip())
    return {j: states[j] for j in job_ids if j in states}


def job_ending(job_id: str) -> str | None:
    """How a job ended, from `scontrol show job` while the controller remembers it."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"JobState=(\w+)", out)
    return match.group(1) if match else None


def ending_reason(state: str) -> str | None:
    return _ENDINGS.get(state)


def cancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=True, capture_output=True, text=True, timeout=60)



# -- planning -------------------------------------------------------------------------------------


def dry_run(cells: Sequence[Cell], resources: Resources, slurm: SlurmConfig, store: Store) -> str:
    """What `run --executor slurm` would submit: arrays, #SBATCH lines, and an estimate of GPU-hours."""
    if not cells:
        return "Nothing to submit."
    chunk = max_array_size() if available() else 1000
    params = sbatch_parameters(cells[0].grid, resources, slurm)
    arrays = [cells[i:i + chunk] for i in range(0, len(cells), chunk)]
    lines = [f"\n{len(cells)} cell(s) in {len(arrays)} job array(s) of at most {chunk}; each cell is a job of "
             f"{resources.nodes} node(s) x {resources.tasks_per_node} task(s):"]
    lines += sbatch_lines(params, len(arrays[0]))
    lines.append(estimate(cells, resources, store))
    return "\n".join(lines)


def estimate(cells: Sequence[Cell], resources: Resources, store: Store) -> str:
    """GPU-hours from the training throughput of earlier rows of the same method and backbone."""
    rates: dict[tuple, list[float]] = {}
    for row in store.read().rows:
        if row.get("train_images_per_second"):
            rates.setdefault((row["method"], row["variant"], row["backbone"]), []).append(row["train_images_per_second"])
    seconds, known = 0.0, 0
    for cell in cells:
        rate = rates.get((cell.method, cell.variant, cell.backbone))
        if rate and cell.train.iterations is not None:
            images = cell.train.iterations * cell.train.ids_per_batch * cell.train.images_per_id
            seconds, known = seconds + images / (sum(rate) / len(rate)), known + 1
    if not known:
        return "No GPU-hour estimate: the store has no throughput figures for these methods and backbones (or the schedule is in epochs)."
    gpus = resources.nodes * max(resources.gpus_per_node, 0)
    unit = f"{seconds * gpus / 3600:.1f} GPU-hours ({gpus} GPU(s) per cell)" if gpus else f"{seconds / 3600:.2f} hours of {resources.world_size}-process CPU jobs"
    return f"Estimated training time for {known} of {len(cells)} cell(s), from the throughput of earlier rows: {unit}."
