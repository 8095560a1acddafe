"""Submit cells to SLURM through submitit: one job array per group of cells with equal resources.

Each array task is one cell: `nodes x tasks_per_node` tasks, one DDP process each, whose rank,
world size and master address come from submitit's TorchDistributedEnvironment. The callable is
`SlurmCell`, a submitit Checkpointable around harness.engine.cell.run_cell: on SLURM's warning signal
(time limit or preemption) every rank stops at the same step, rank 0 writes a checkpoint, and
submitit requeues the job, which resumes from it. Submission returns at once; the manifest beside
the store (harness.manifest) and the scheduler (squeue, scontrol; never sacct) tell the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence

import submitit

from harness import manifest, provenance
from harness.engine import checkpoint
from harness.engine.cell import CellHeld, run_cell
from harness.errors import UserError
from harness.executors.base import Outcome, classify
from harness.executors.estimate import estimate
from harness.spec import Cell, RayConfig, Resources, SlurmConfig
from harness.store import Store

# sbatch's complaint -> the setting that caused it (spec key / command-line flag). The first word found
# in the complaint wins, so the narrower ones come first ("accounting/QOS policy" also says "time
# limits"; "Invalid account or account/partition combination" is about the account).
_SETTINGS = (
    ("accounting/qos policy", "[slurm] qos, account and time, and the resources asked, against the site's limits"),
    ("account", "[slurm] account / --account"),
    ("partition", "[slurm] partition / --partition"),
    ("qos", "[slurm] qos / --qos"),
    ("gres", "[slurm] gres or [resources] gpus_per_node / --gres, --gpus-per-node"),
    ("gpu", "[slurm] gres or [resources] gpus_per_node / --gres, --gpus-per-node"),
    ("feature", "[slurm] constraint / --constraint"),
    ("constraint", "[slurm] constraint / --constraint"),
    ("time", "[slurm] time / --time"),
    ("mem", "[slurm] mem / --mem"),
    ("cpus-per-task", "[slurm] cpus_per_task / --cpus-per-task"),
    ("node configuration", "[resources] nodes, world_size, gpus_per_node or [slurm] cpus_per_task, mem"),
    ("processors", "[resources] nodes, world_size or [slurm] cpus_per_task / --cpus-per-task"),
    ("job array", "[slurm] array_parallelism / --array-parallelism"),
    ("node name", "[slurm] extra (--nodelist, --exclude) / --sbatch"),
    ("option", "[slurm] extra / --sbatch"),
)
# squeue states in which a job still holds or waits for its place.
ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
}
# How the scheduler names the end of a job that left no reason of its own.
_ENDINGS = {
    "TIMEOUT": "time limit",
    "OUT_OF_MEMORY": "OOM (out of memory)",
    "NODE_FAIL": "node failure",
    "PREEMPTED": "preempted",
    "CANCELLED": "cancelled",
    "DEADLINE": "deadline",
    "BOOT_FAIL": "node boot failure",
}


class SlurmCell(submitit.helpers.Checkpointable):
    """The job's callable: run the cell, recording attempts and failures in the manifest.

    submitit pickles it with its arguments; on the requeue signal its `checkpoint()` (inherited)
    resubmits the same call, and the restarted job finds the checkpoint in the cell's folder.
    """

    def __call__(self, cell: Cell | str, resources: Resources | str, store_root: str) -> None:
        if isinstance(cell, str):  # a job queued by reidbench 0.1.0 carries JSON; its requeues do too
            cell, resources = Cell.from_json(cell), Resources(**json.loads(resources))
        job = submitit.JobEnvironment()
        os.environ.setdefault("MASTER_PORT", str(master_port(job.job_id)))  # before export(), which reads it
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        store, cell_id = Store(store_root), cell.id
        attempt = f"{job.job_id}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
        main = dist_env.rank == 0
        if main:
            record = manifest.read(store, cell_id) or {}
            manifest.update(
                store,
                cell_id,
                state="running",
                attempts=record.get("attempts", 0) + 1,
                job_id=job.job_id,
                hostname=socket.gethostname(),
                started_at=provenance.now(),
            )
            store.write_state(
                cell_id,
                "running",
                executor="slurm",
                attempt=attempt,
                job_id=job.job_id,
                hostname=socket.gethostname(),
                log_dir=record.get("stdout"),
            )
        submitit_handler = checkpoint.listen(signal.SIGUSR2)

        def failed(reason: str) -> None:  # the watchdog ends the process: no exception comes back here
            manifest.update(store, cell_id, state="failed", reason=classify(reason), failed_at=provenance.now())

        try:
            run_cell(cell, resources, store_root, "slurm", attempt, owner=f"slurm-{job.job_id}", on_failure=failed)
        except CellHeld as held:  # another live run trains the cell: this job leaves it to that run
            if main:
                manifest.update(store, cell_id, state="held", reason=str(held), finished_at=provenance.now())
            return
        except checkpoint.StopRequested as stop:
            signal.signal(signal.SIGUSR2, submitit_handler)
            if main:
                manifest.update(
                    store, cell_id, state="requeued", checkpoint_step=stop.step, requeued_at=provenance.now()
                )
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
                manifest.update(
                    store, cell_id, state="failed", reason=classify(state.get("reason", "")), failed_at=provenance.now()
                )
            raise
        if main:
            manifest.update(store, cell_id, state="done", finished_at=provenance.now())


# -- submission -----------------------------------------------------------------------------------


def available() -> bool:
    return shutil.which("squeue") is not None


def check_cluster() -> None:
    """A clear error before anything is submitted when there is no SLURM to talk to."""
    if shutil.which("sbatch") is None:
        raise UserError(
            "--executor slurm needs SLURM's sbatch, which is not on PATH; run on a cluster login node "
            "(or start a local cluster with scripts/slurm-local.sh up)."
        )
    try:
        subprocess.run(["squeue", "-h", "-o", "%i", "-j", "0"], capture_output=True, text=True, timeout=30)
        subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=30, check=True)
    except (subprocess.SubprocessError, OSError) as err:
        raise UserError(
            f"the SLURM controller does not answer (sinfo: {getattr(err, 'stderr', '') or err}); "
            f"check that slurmctld is up (scontrol ping)."
        ) from None


def max_array_size() -> int:
    """The cluster's MaxArraySize: an array holds indices 0 .. MaxArraySize - 1."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(match.group(1)) - 1 if match else 1000


# Rank 0 listens on this port on the job's first node. submitit draws it from 20000-60000, which is
# mostly Linux's ephemeral range (32768-60999): any outgoing connection on the node may hold it, and
# rank 0 then fails with EADDRINUSE while the other ranks wait out the collective timeout (seen on
# this machine's cluster). Below that range, and above Ray's default worker ports (10002-19999).
_PORTS = range(22000, 32768)


def master_port(job_id: str) -> int:
    """The cell's rendezvous port, the same on every rank and node of the job (and on its requeues)."""
    digest = hashlib.sha256(str(job_id).encode()).digest()
    return _PORTS[int.from_bytes(digest[:4], "big") % len(_PORTS)]


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
        # The spec's [env] is exported by the job script, before srun starts the ranks (which inherit it).
        "setup": [*slurm.setup, *(f"export {name}={shlex.quote(value)}" for name, value in resources.env)] or None,
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


def submit(
    cells: Sequence[Cell], resources: Resources, slurm: SlurmConfig, store: Store, log: Callable[[str], None] = print
) -> list[dict]:
    """Submit `cells` as job arrays; returns their manifest records. Non-blocking."""
    check_cluster()
    root = store.root.resolve()  # jobs may start in another working directory
    params = sbatch_parameters(cells[0].grid if cells else "grid", resources, slurm)
    executor = submitit.SlurmExecutor(folder=root / "slurm", max_num_timeout=slurm.max_requeues)
    executor.update_parameters(**params)
    chunk = max_array_size()
    records = []
    for first in range(0, len(cells), chunk):
        part = cells[first : first + chunk]
        try:  # submitit echoes sbatch's stderr; the refusal is shown once, below
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                jobs = [executor.submit(SlurmCell(), c, resources, str(root)) for c in part]
        except submitit.core.utils.FailedJobError as err:
            raise UserError(refusal(str(err))) from None
        submitted = provenance.now()
        fields, states = {}, []
        for index, (cell, job) in enumerate(zip(part, jobs)):
            array_id, _, task = job.job_id.partition("_")
            fields[cell.id] = dict(
                executor="slurm",
                grid=cell.grid,
                state="submitted",
                job_id=job.job_id,
                array_job_id=array_id,
                array_index=int(task or index),
                submitted_at=submitted,
                stdout=str(job.paths.stdout),
                folder=str(root / "slurm"),
            )
            states.append(
                store.state_write(cell.id, "submitted", executor="slurm", job_id=job.job_id, submitted_at=submitted)
            )
        records.extend(manifest.replace_many(store, fields, states))
        first_id = jobs[0].job_id.partition("_")[0]
        log(
            f"submitted {len(part)} cell(s) as job array {first_id}"
            if len(part) > 1
            else f"submitted 1 cell as job {first_id}"
        )
    return records


def run_slurm(
    cells: Sequence[Cell], resources: Resources, store: Store, *, slurm: SlurmConfig, ray: RayConfig | None = None
) -> list[Outcome]:
    """The executor interface: submit and return at once; results come later (`reidbench status`)."""
    records = submit(cells, resources, slurm, store)
    return [Outcome(cell.id, True, f"job {record['job_id']}", submitted=True) for cell, record in zip(cells, records)]


def refusal(stderr: str) -> str:
    """sbatch's refusal in one line, naming the setting it is about.

    sbatch says why in one or two lines ("sbatch: error: Memory specification can not be satisfied",
    then "... Batch job submission failed: Requested node configuration is not available"); all are
    kept, joined, and sbatch's own hints ("Try sbatch --help") are left out.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip().startswith("sbatch:")] or [stderr.strip()]
    parts = []
    for line in lines:
        part = (
            line.removeprefix("sbatch:")
            .strip()
            .removeprefix("error:")
            .strip()
            .removeprefix("Batch job submission failed:")
            .strip()
        )
        if part and part not in parts:
            parts.append(part)
    lower = " ".join(parts).lower()
    setting = next((name for word, name in _SETTINGS if word in lower), None)
    return f"SLURM refused the job: {'; '.join(parts)}" + (f" (check {setting})" if setting else "")


# -- the scheduler's view -------------------------------------------------------------------------


def scheduler_states(job_ids: Sequence[str] = ()) -> dict[str, tuple[str, str]]:
    """job id -> (state, reason) for the jobs squeue still knows (pending, running and recently ended)."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=60
    )
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


def job_endings() -> dict[str, str]:
    """job id -> state of every job the controller remembers, from one `scontrol show job` (the
    per-job form costs a controller round trip per cell: seconds on a 2,000-cell grid). Array
    tasks are keyed both by their own id and by ``<array id>_<task>``, as submitit names them."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, timeout=60).stdout
    endings = {}
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" not in fields or "JobState" not in fields:
            continue
        endings[fields["JobId"]] = fields["JobState"]
        if "ArrayJobId" in fields:  # a pending array's tasks share one record: ArrayTaskId=0-999%8
            for task in _tasks(fields.get("ArrayTaskId", "")):
                endings[f"{fields['ArrayJobId']}_{task}"] = fields["JobState"]
    return endings


def _tasks(spec: str) -> list[int]:
    """The task indices of an ArrayTaskId: "3", "0-999%8", "0,4-6", "0-10:2"."""
    tasks = []
    for part in spec.split("%")[0].split(","):
        first, _, rest = part.partition("-")
        last, _, step = rest.partition(":")
        if first.isdigit() and (not last or last.isdigit()) and (not step or step.isdigit()):
            tasks.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    return tasks


def ending_reason(state: str) -> str | None:
    return _ENDINGS.get(state)


def cancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=True, capture_output=True, text=True, timeout=60)


# -- planning -------------------------------------------------------------------------------------


def dry_run(cells: Sequence[Cell], resources: Resources, slurm: SlurmConfig, store: Store) -> str:
    """What `run --executor slurm` would submit: arrays, #SBATCH lines, and the GPU-hours they need
    (harness/executors/estimate.py)."""
    if not cells:
        return "Nothing to submit."
    chunk = max_array_size() if available() else 1000
    params = sbatch_parameters(cells[0].grid, resources, slurm)
    arrays = [cells[i : i + chunk] for i in range(0, len(cells), chunk)]
    lines = [
        f"\n{len(cells)} cell(s) in {len(arrays)} job array(s) of at most {chunk}; each cell is a job of "
        f"{resources.nodes} node(s) x {resources.tasks_per_node} task(s):"
    ]
    lines += sbatch_lines(params, len(arrays[0]))
    lines.append(estimate(arrays, resources, slurm, store))
    return "\n".join(lines)
