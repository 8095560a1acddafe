"""What each cell of a grid is doing: the store, the manifest and the scheduler, merged.

The store says what is done (rows) and what failed in the cell's own code (state.json); the
manifest says what was submitted where and how often it started; squeue / scontrol say what
the scheduler is doing with it now, and how a job ended when the cell could not say (time
limit, out of memory). sacct is never needed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import manifest
from harness.spec import Cell
from harness.store import Store


@dataclass(frozen=True)
class CellStatus:
    cell: Cell
    state: str  # done | pending | running | failed | cancelled | interrupted | not started | rows missing | submitted
    detail: str = ""
    attempts: int | None = None
    job_id: str | None = None

    @property
    def active(self) -> bool:
        """Queued or running on a cluster: a re-submission leaves it alone."""
        return self.state in ("pending", "running", "submitted")


def statuses(cells: Sequence[Cell], store: Store) -> list[CellStatus]:
    from harness.cell import is_done

    records = {c.id: manifest.read(store, c.id) for c in cells}
    slurm_ids = [r["job_id"] for r in records.values() if r and r.get("executor") == "slurm" and "job_id" in r]
    scheduler = _slurm_states(slurm_ids)
    out = []
    for cell in cells:
        record = records[cell.id]
        if is_done(store, cell):
            out.append(CellStatus(cell, "done", attempts=record and record.get("attempts"), job_id=record and record.get("job_id")))
        elif record and record.get("executor") == "slurm":
            out.append(_slurm_status(cell, store, record, scheduler))
        else:
            out.append(_local_status(cell, store))
    return out


def _local_status(cell: Cell, store: Store) -> CellStatus:
    state = store.read_state(cell.id) or {"state": "not started"}
    label = state["state"]
    if label == "done":  # but rows are gone: `run` will redo the cell
        return CellStatus(cell, "rows missing", f"expected rows under {store.root / 'rows' / cell.id}")
    if label == "running" and state.get("hostname") == socket.gethostname() and not _alive(state.get("pid")):
        label = "interrupted"
    return CellStatus(cell, label, state.get("reason") or state.get("log_dir") or "")


def _slurm_status(cell: Cell, store: Store, record: dict, scheduler: dict[str, tuple[str, str]]) -> CellStatus:
    from harness.executors import slurm

    job_id, attempts = record.get("job_id"), record.get("attempts", 0)
    status = lambda state, detail="": CellStatus(cell, state, detail, attempts, job_id)  # noqa: E731
    queued = scheduler.get(job_id)
    # `cancelled` is set by `reidbench cancel` alone: the job may take a while to end (its tasks get
    # SIGTERM, then SIGKILL after KillWait), and its dying tasks may still record a failure.
    if record.get("cancelled"):
        ending = " (its job is still ending)" if queued and queued[0] in slurm.ACTIVE else ""
        return status("cancelled", "reidbench cancel" + ending)
    if queued and queued[0] in slurm.ACTIVE:
        state, reason = queued
        if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"):
            return status("pending", reason if reason not in ("None", "") else "")
        return status("running", record.get("stdout", ""))
    if record.get("state") == "cancelled":
        return status("cancelled", "reidbench cancel")
    if record.get("state") == "failed":
        return status("failed", record.get("reason", ""))
    ended = queued[0] if queued else (slurm.job_ending(job_id) if job_id and slurm.available() else None)
    if ended == "CANCELLED":
        return status("cancelled", "scancel")
    if ended and slurm.ending_reason(ended):
        return status("failed", f"{slurm.ending_reason(ended)} (SLURM job state {ended}); log: {record.get('stdout', '')}")
    log = record.get("stdout", "")
    if ended == "COMPLETED":
        return status("rows missing", f"the job completed without writing rows; log: {log}")
    if ended or record.get("state") in ("submitted", "running", "requeued"):
        # Killed before the cell could say why: without cgroups, the kernel's OOM killer shows only in the log.
        killed = _killed_in_log(log)
        what = "OOM (killed by the kernel)" if killed else f"job {job_id} ended ({ended or 'gone from the scheduler'}) without a result"
        return status("failed", f"{what}; log: {log}")
    return status(record.get("state", "unknown"), record.get("reason", ""))


def _killed_in_log(log: str) -> bool:
    try:
        text = tail(Path(log), 50).lower()
    except OSError:
        return False
    return "oom" in text or "out of memory" in text or "out-of-memory" in text


def _slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    if not job_ids:
        return {}
    from harness.executors import slurm

    return slurm.scheduler_states(job_ids) if slurm.available() else {}


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_files(store: Store, cell_id: str) -> list[Path]:
    """Every log file of a cell: the SLURM task logs of its job, or the local launcher's logs."""
    record = manifest.read(store, cell_id) or {}
    if record.get("executor") == "slurm" and record.get("folder"):
        return sorted(Path(record["folder"]).glob(f"{record['job_id']}_*_log.*"))
    state = store.read_state(cell_id) or {}
    folder = Path(state["log_dir"]) if state.get("log_dir") else store.cell_dir(cell_id) / "logs"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def tail(path: Path, lines: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 200 * lines))
        return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
