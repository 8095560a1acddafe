"""Executors: thin adapters that start the cell callable (harness.cell.run_cell) somewhere.

``local`` runs each cell's DDP processes on this machine; ``slurm`` submits the same callable to
SLURM through submitit and returns at once; ``ray`` runs each cell as a Ray Train TorchTrainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.errors import UserError, closest


@dataclass(frozen=True)
class Outcome:
    cell_id: str
    ok: bool
    reason: str | None = None


# (cells, resources, store, **executor settings) -> outcomes; slurm returns none (it only submits).
Executor = Callable[..., list[Outcome]]


EXECUTORS = ("local", "slurm", "ray")


def get_executor(name: str) -> Executor:
    """The executor's entry point; slurm's takes `slurm=` and returns once submitted, ray's takes `ray=`."""
    if name == "local":
        from harness.executors.local import run_local

        return run_local
    if name == "slurm":
        from harness.executors.slurm import run_slurm

        return run_slurm
    if name == "ray":
        from harness.executors.ray import run_ray

        return run_ray
    raise UserError(f"--executor {name!r} is not an executor; {closest(name, EXECUTORS)}")
