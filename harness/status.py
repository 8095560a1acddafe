"""What each cell of a grid is doing: the store, the manifest and the scheduler, merged.

The store says what is done (a published set of rows, every one readable and of one run; a
damaged set shows as "damaged" and is recomputed), what failed in the cell's own code
(state.json) and which live run holds the cell (its lease, harness/lease.py); the manifest says what was submitted where and how often it started; squeue / scontrol say what
the scheduler is doing with it now, and how a job ended when the cell could not say (time
limit, out of memory). sacct is never needed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import lease, manifest
from harness.executors import slurm
from harness.spec import ID_VERSION, Cell
from harness.store import CellRows, Store


def expected_rows(cell: Cell) -> list[tuple[str, bool]]:
    """The (test dataset, re-ranked) rows a finished cell has in the store."""
    return [(test, rerank) for test in cell.test_datasets for rerank in (False, True)]


def is_done(store: Store, cell: Cell) -> bool:
    """Every row the cell owes is published, readable, of this cell and of one run."""
    return store.cell_rows(cell.id).complete(expected_rows(cell))


def damage(store: Store, cell: Cell, found: CellRows | None = None) -> str:
    """Why a cell with published rows (`found`, read if not given) is not done ("" when it has
    none, or is done)."""
    found = store.cell_rows(cell.id) if found is None else found
    if found.complete(expected_rows(cell)) or (not found.rows and not found.problems):
        return ""
    absent = found.missing(expected_rows(cell))
    if not found.problems and all((test, not rerank) in absent for test, rerank in absent):
        return ""  # whole test sets added to the cell since its run: not damage ("to evaluate" or "rows missing")
    missing = [f"{test}.{'rerank' if rerank else 'plain'}" for test, rerank in absent]
    return "; ".join(
        found.problems[:2]
        + ([f"no {', '.join(missing)} row of run {found.run_id}"] if missing and not found.problems else [])
    )


def holder(store: Store, cell: Cell) -> lease.Holder | None:
    """The live run that holds the cell, if any."""
    found = lease.read(store.cell_dir(cell.id))
    return found if found is not None and not found.stale() else None


@dataclass(frozen=True)
class CellStatus:
    cell: Cell
    # done | damaged | pending | running | failed | cancelled | interrupted | not started | rows missing | submitted
    # | to evaluate
    state: str
    detail: str = ""
    attempts: int | None = None
    job_id: str | None = None

    @property
    def active(self) -> bool:
        """Queued or running on a cluster: a re-submission leaves it alone."""
        return self.state in ("pending", "running", "submitted")


def cell_statuses(cells: Sequence[Cell], store: Store) -> list[CellStatus]:
    """Where each cell stands: the store, the manifest and the scheduler merged (one squeue call)."""
    records = {c.id: manifest.read(store, c.id) for c in cells}
    slurm_ids = [r["job_id"] for r in records.values() if r and r.get("executor") == "slurm" and "job_id" in r]
    scheduler = _slurm_states(slurm_ids)
    endings: dict[str, str] = {}  # how ended jobs ended: one scontrol query, made when a cell first needs it

    def ending(job_id: str) -> str | None:
        if not endings and slurm.available():
            endings.update(slurm.job_endings() or {"": ""})
        return endings.get(job_id)

    out = []
    for cell in cells:
        record = records[cell.id]
        held = holder(store, cell)
        found = store.cell_rows(cell.id)  # once per cell: the rows are read (or looked up in a segment) once
        broken = damage(store, cell, found)
        if found.complete(expected_rows(cell)):
            out.append(
                CellStatus(
                    cell, "done", attempts=record and record.get("attempts"), job_id=record and record.get("job_id")
                )
            )
        elif held is not None:
            out.append(
                CellStatus(
                    cell,
                    "running",
                    f"held by {held.describe()}",
                    record and record.get("attempts"),
                    record and record.get("job_id"),
                )
            )
        elif broken:
            out.append(
                CellStatus(
                    cell,
                    "damaged",
                    f"recomputed by the next run: {broken}",
                    record and record.get("attempts"),
                    record and record.get("job_id"),
                )
            )
        elif record and record.get("executor") == "slurm":
            out.append(_slurm_status(cell, store, record, scheduler, ending))
        else:
            out.append(_local_status(cell, store))
        if out[-1].state in ("rows missing", "not started", "cancelled") and store.has_model(cell.id):
            missing = [t for t in cell.test_datasets if not all(store.has_row(cell.id, t, rr) for rr in (False, True))]
            out[-1] = CellStatus(
                cell,
                "to evaluate",
                f"kept model, no rows for {', '.join(missing)}: `run` evaluates it without training",
                out[-1].attempts,
                out[-1].job_id,
            )
    return _with_trainers(out, store)


def _with_trainers(statuses: list[CellStatus], store: Store) -> list[CellStatus]:
    """A view cell (Cell.trainer) that is not done stands where its training cell's run stands: queued
    or running with it when that cell is active (its job evaluates the view), "to evaluate" when that
    cell's model is kept."""
    by_id = {s.cell.id: s for s in statuses}
    out = []
    for status in statuses:
        trainer = status.cell.trainer()
        if trainer is None or status.state == "done" or status.active:
            out.append(status)
            continue
        training = by_id.get(trainer.id)
        if training is not None and training.active:
            out.append(
                CellStatus(
                    status.cell,
                    training.state,
                    f"a view of cell {trainer.id}: its job evaluates this one after its own rows",
                    job_id=training.job_id,
                )
            )
        elif status.state in ("rows missing", "not started", "cancelled") and store.has_model(trainer.id):
            out.append(
                CellStatus(
                    status.cell,
                    "to evaluate",
                    f"a view of cell {trainer.id}: `run` evaluates its kept model, without training",
                    status.attempts,
                    status.job_id,
                )
            )
        else:
            out.append(status)
    return out


def older_cells(cells: Sequence[Cell], store: Store) -> dict[str, list[tuple[str, int]]]:
    """For each cell, the (cell id, id version) of rows in the store that an older reidbench wrote for
    the same method, variant, backbone, training set and seed under an older id version (their ids
    differ from this version's). They stay readable and reportable; `reidbench status` names them."""
    old: dict[tuple, dict[str, int]] = {}
    for row in store.read(methods={c.method for c in cells}).rows:  # the filter reaches the segments' reader
        version = row.get("id_version") or 1
        if version < ID_VERSION:
            key = (row["method"], row["variant"], row["backbone"], row["train_dataset"], row["seed"])
            old.setdefault(key, {})[row["cell_id"]] = version
    return {
        c.id: sorted(old.get((c.method, c.variant, c.backbone, c.train_dataset, c.seed), {}).items()) for c in cells
    }


def _local_status(cell: Cell, store: Store) -> CellStatus:
    state = store.read_state(cell.id) or {"state": "not started"}
    label = state["state"]
    if label == "done":  # but rows are gone: `run` will redo the cell
        return CellStatus(cell, "rows missing", f"expected rows under {store.root / 'rows' / cell.id}")
    if label == "running" and state.get("hostname") == socket.gethostname() and not _alive(state.get("pid")):
        label = "interrupted"  # no live run holds the cell (cell_statuses looked first), and its launcher is gone
    return CellStatus(cell, label, state.get("reason") or state.get("log_dir") or "")


def _slurm_status(
    cell: Cell, store: Store, record: dict, scheduler: dict[str, tuple[str, str]], ending=slurm.job_ending
) -> CellStatus:
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
    ended = queued[0] if queued else (ending(job_id) if job_id and slurm.available() else None)
    if ended == "CANCELLED":
        return status("cancelled", "scancel")
    if ended and slurm.ending_reason(ended):
        return status(
            "failed", f"{slurm.ending_reason(ended)} (SLURM job state {ended}); log: {record.get('stdout', '')}"
        )
    log = record.get("stdout", "")
    if ended == "COMPLETED":
        return status("rows missing", f"the job completed without writing rows; log: {log}")
    if ended or record.get("state") in ("submitted", "running", "requeued"):
        # Killed before the cell could say why: without cgroups, the kernel's OOM killer shows only in the log.
        killed = _killed_in_log(log)
        what = (
            "OOM (killed by the kernel)"
            if killed
            else f"job {job_id} ended ({ended or 'gone from the scheduler'}) without a result"
        )
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
    """Every log file of a cell: the SLURM task logs of its job, or the local launcher's logs; for a
    view that its training cell's run evaluated (``logs_of`` in its state), that run's."""
    state = store.read_state(cell_id) or {}
    if state.get("logs_of"):
        cell_id = state["logs_of"]
        state = store.read_state(cell_id) or {}
    record = manifest.read(store, cell_id) or {}
    if record.get("executor") == "slurm" and record.get("folder"):
        return sorted(Path(record["folder"]).glob(f"{record['job_id']}_*_log.*"))
    folder = Path(state["log_dir"]) if state.get("log_dir") else store.cell_dir(cell_id) / "logs"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def tail(path: Path, lines: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 200 * lines))
        return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
