"""Run cells on this machine: one DDP process per rank, started by PyTorch's elastic launcher.

This is what ``torchrun --standalone`` does, so a cell sees the same environment (RANK,
WORLD_SIZE, MASTER_ADDR, ...) as under torchrun on a cluster node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Sequence

import torch
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from harness import lease, provenance
from harness.engine.cell import run_cell
from harness.errors import UserError
from harness.executors.base import Outcome
from harness.spec import Cell, RayConfig, Resources, SlurmConfig
from harness.store import Store


def run_local(
    cells: Sequence[Cell],
    resources: Resources,
    store: Store,
    *,
    slurm: SlurmConfig | None = None,
    ray: RayConfig | None = None,
) -> list[Outcome]:
    """Run the cells one after the other, each as `resources.world_size` processes."""
    wants_cuda = resources.device == "cuda" or (resources.device == "auto" and torch.cuda.is_available())
    if wants_cuda and resources.world_size > torch.cuda.device_count():
        raise UserError(
            f"world_size = {resources.world_size} needs that many GPUs, but this machine has "
            f"{torch.cuda.device_count()}; lower [resources] world_size or run on a cluster."
        )
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // resources.world_size)))
    # The launcher logs every worker's traceback at ERROR; the cell's state.json keeps it instead,
    # and the command line shows one line per failed cell.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.multiprocessing").setLevel(logging.ERROR)
    return [_run_one(cell, resources, store) for cell in cells]


def _run_one(cell: Cell, resources: Resources, store: Store) -> Outcome:
    attempt = uuid.uuid4().hex[:12]
    held = _held(store, cell.id, attempt)
    if held:  # another live run trains it: leave it, and its state, alone
        return Outcome(cell.id, True, held, skipped=True)
    log_dir = store.cell_dir(cell.id) / "logs"
    store.write_state(
        cell.id,
        "running",
        attempt=attempt,
        executor="local",
        started_at=provenance.now(),
        log_dir=str(log_dir),
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=resources.world_size,
        run_id=f"{cell.id}-{attempt}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir), redirects=Std.ALL, tee={0: Std.ALL}),
    )
    args = (cell, resources, str(store.root), "local", attempt)
    try:
        with _environment(dict(resources.env)):  # the spawned ranks inherit it
            elastic_launch(config, run_cell)(*args)
    except ChildFailedError as err:
        held = _held(store, cell.id, attempt)
        if held:  # taken by another run between the check above and the workers' claim
            return Outcome(cell.id, True, held, skipped=True)
        return Outcome(cell.id, False, _record_launch_failure(store, cell.id, attempt, err, log_dir))
    return Outcome(cell.id, True)


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """The spec's [env] set for the launch only; this process's environment is restored after."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _held(store: Store, cell_id: str, attempt: str) -> str | None:
    """Who else holds the cell's lease while alive, in words; None when nobody does."""
    holder = lease.read(store.cell_dir(cell_id))
    if holder is None or holder.stale() or holder.run_id == attempt:
        return None
    return f"held by {holder.describe()}"


def _record_launch_failure(store: Store, cell_id: str, attempt: str, err: ChildFailedError, log_dir) -> str:
    """The reason a cell failed. A rank killed by a signal could not say why itself, and is the
    root cause of the errors its peers then see, so it comes first."""
    state = store.read_state(cell_id) or {}
    recorded = state.get("reason") if state.get("state") == "failed" and state.get("attempt") == attempt else None
    # SIGTERM is what the launcher sends to the survivors; any other signal came first.
    killed = sorted(
        ((rank, f) for rank, f in err.failures.items() if f.exitcode < 0), key=lambda rf: (rf[1].exitcode == -15, rf[0])
    )
    if recorded and all(f.exitcode == -15 for _, f in killed):  # the launcher stopped the survivors
        return recorded
    if killed:
        rank, failure = killed[0]
        reason = f"rank {rank} was killed by {failure.signal_name()} (out of memory, or stopped from outside)"
        reason += f"; then {recorded}" if recorded else ""
    else:
        rank, failure = err.get_first_failure()
        reason = f"rank {rank} exited with code {failure.exitcode}"
    store.write_state(
        cell_id,
        "failed",
        reason=reason,
        attempt=attempt,
        failed_at=provenance.now(),
        log_dir=str(log_dir),
        traceback=state.get("traceback"),
    )
    return reason
