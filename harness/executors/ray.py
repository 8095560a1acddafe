"""Run cells on a Ray cluster: each cell is a Ray Train TorchTrainer around harness.engine.cell.run_cell.

Ray Train starts `world_size` workers and their process group (gloo on CPUs, NCCL on GPUs); the
training loop reports checkpoints through `ray.train.report` and, after a worker failure, Ray
restarts the group (up to `[ray] max_failures` times) and the loop restores from
`ray.train.get_checkpoint()`. Cells are fitted from threads, so several run at once when the
cluster has room for their workers.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import lease, manifest, provenance
from harness.engine import checkpoint
from harness.engine.cell import CellHeld, run_cell
from harness.errors import UserError
from harness.executors.base import Outcome, classify
from harness.spec import Cell, RayConfig, Resources, SlurmConfig
from harness.store import Store


class RaySink:
    """Checkpoints in Ray Train's storage: rank 0 uploads, every rank reports."""

    def candidates(self) -> list[str]:
        import ray.train

        return ["ray"] if ray.train.get_checkpoint() is not None else []

    def load(self, name: str) -> dict:
        import ray.train

        with ray.train.get_checkpoint().as_directory() as folder:
            return checkpoint.load(Path(folder) / "state.pt")  # weights_only: data, never code

    def discard(self, name: str, reason: str) -> None:
        pass  # Ray's storage keeps it; the run starts afresh and reports new checkpoints

    def save(self, state: dict | None, step: int) -> None:
        import ray.train

        if state is None:
            ray.train.report({"step": step})
            return
        with tempfile.TemporaryDirectory() as folder:
            try:
                checkpoint.save(Path(folder) / "state.pt", state)
            except checkpoint.NotWritten:
                ray.train.report({"step": step})  # every rank reports at each step, checkpoint or not
                raise
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def clear(self) -> None:
        pass  # Ray keeps the run's checkpoints under its storage path


def train_loop(config: dict) -> None:
    """Ray Train's per-worker loop: export the rank variables run_cell reads, then run the cell."""
    import ray.train

    context = ray.train.get_context()
    os.environ.update(
        RANK=str(context.get_world_rank()),
        WORLD_SIZE=str(context.get_world_size()),
        LOCAL_RANK=str(context.get_local_rank()),
        LOCAL_WORLD_SIZE=str(context.get_local_world_size()),
        # Ray's nodes may share a hostname (two on one machine); the node's address tells them apart.
        REIDBENCH_NODE=f"{socket.gethostname()} ({ray.util.get_node_ip_address()})",
    )
    store = Store(config["store"])
    pids = store.cell_dir(config["cell_id"]) / "ray"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"rank{context.get_world_rank()}.pid").write_text(str(os.getpid()))
    if context.get_world_rank() == 0:  # each start of the worker group is an attempt
        record = manifest.read(store, config["cell_id"]) or {}
        manifest.update(store, config["cell_id"], attempts=record.get("attempts", 0) + 1, started_at=provenance.now())
    try:
        run_cell(config["cell"], config["resources"], config["store"], "ray", config["attempt"], sink=RaySink())
    except CellHeld:
        return  # another live run trains the cell; _fit says so


def run_ray(
    cells: Sequence[Cell], resources: Resources, store: Store, *, ray: RayConfig, slurm: SlurmConfig | None = None
) -> list[Outcome]:
    """Fit every cell; blocks until all are done or failed."""
    import ray as ray_module

    root = store.root.resolve()
    _connect(ray_module, ray.address, dict(resources.env))
    storage = Path(ray.storage_path or root / "ray").resolve()
    cpus = ray_module.cluster_resources().get("CPU", 1)
    parallel = max(1, int(cpus // (resources.world_size * ray.cpus_per_worker)))
    with ThreadPoolExecutor(max_workers=min(parallel, len(cells)) or 1) as pool:
        return list(pool.map(lambda cell: _fit(cell, resources, root, storage, ray), cells))


def _connect(ray_module, address: str | None, variables: dict[str, str]) -> None:
    """Join (or start) the Ray cluster; its runtime environment carries the spec's [env] to every
    worker (Ray sets it before the worker process starts, so NCCL reads it when the group forms)."""
    if ray_module.is_initialized():
        return
    _check_reachable(address)
    forwarded = {k: os.environ[k] for k in ("REIDBENCH_CACHE", "OMP_NUM_THREADS") if k in os.environ}
    env = {"env_vars": {**forwarded, **variables}}
    try:
        ray_module.init(address=address, runtime_env=env, logging_level="ERROR", log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"at {address!r} (--ray-address / RAY_ADDRESS / [ray] address)" if address else "locally"
        raise UserError(f"cannot reach a Ray cluster {where}: {err}") from None


def _check_reachable(address: str | None) -> None:
    """ray.init retries an unreachable head for minutes; a TCP probe says so in seconds."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "localhost", int(port)), timeout=5).close()
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot reach a Ray cluster at {address!r} (--ray-address / RAY_ADDRESS / [ray] address): "
            f"{err}; start one with `ray start --head`, or leave the address out to start a local one."
        ) from None


def _fit(cell: Cell, resources: Resources, root: Path, storage: Path, config: RayConfig) -> Outcome:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    store = Store(root)
    attempt = f"ray-{provenance.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    holder = lease.read(store.cell_dir(cell.id))
    if holder is not None and not holder.stale():
        return Outcome(cell.id, True, f"held by {holder.describe()}", skipped=True)
    use_gpu = resources.device == "cuda" or (resources.device == "auto" and resources.gpus_per_node > 0)
    manifest.replace(
        store,
        cell.id,
        executor="ray",
        grid=cell.grid,
        state="running",
        submitted_at=provenance.now(),
        storage=str(storage / cell.id),
        attempt=attempt,
    )
    store.write_state(cell.id, "running", executor="ray", attempt=attempt, started_at=provenance.now())
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cell": cell,
            "cell_id": cell.id,
            "resources": resources,
            "store": str(root),
            "attempt": attempt,
        },
        scaling_config=ScalingConfig(
            num_workers=resources.world_size,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
            placement_strategy=config.placement_strategy,
        ),
        # Ray forms the process group: the same timeout bounds its join and every collective.
        torch_config=TorchConfig(
            backend="nccl" if use_gpu else "gloo", timeout_s=round(resources.collective_timeout * 60)
        ),
        run_config=RunConfig(
            name=cell.id,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
        error = result.error
    except Exception as err:  # Ray raises when the run fails for good
        error = err
    holder = lease.read(store.cell_dir(cell.id))
    if error is None and store.published_run(cell.id) != attempt and holder is not None and holder.run_id != attempt:
        return Outcome(cell.id, True, f"held by {holder.describe()}", skipped=True)
    if error is None:
        manifest.update(store, cell.id, state="done", finished_at=provenance.now())
        return Outcome(cell.id, True)
    state = store.read_state(cell.id) or {}
    reason = (
        state.get("reason")
        if state.get("state") == "failed"
        else f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    )
    manifest.update(store, cell.id, state="failed", reason=classify(reason), failed_at=provenance.now())
    if state.get("state") != "failed":
        store.write_state(cell.id, "failed", reason=reason, attempt=attempt, failed_at=provenance.now())
    return Outcome(cell.id, False, reason)
