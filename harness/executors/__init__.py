"""Executors: thin adapters that start the cell callable (harness.engine.cell.run_cell) somewhere.

``local`` runs each cell's DDP processes on this machine; ``slurm`` submits the same callable to
SLURM through submitit and returns at once; ``ray`` runs each cell as a Ray Train TorchTrainer.
All three are called the same way (`Executor`, harness/executors/base.py) and receive the cells
and resources as the frozen dataclasses of harness.spec, which their launchers pickle.
"""

from __future__ import annotations

from harness.errors import UserError, closest
from harness.executors.base import Executor, Outcome, classify
from harness.executors.local import run_local
from harness.executors.ray import run_ray
from harness.executors.slurm import run_slurm

__all__ = ["EXECUTORS", "Executor", "Outcome", "classify", "get_executor"]

_BACKENDS: dict[str, Executor] = {"local": run_local, "slurm": run_slurm, "ray": run_ray}
EXECUTORS = tuple(_BACKENDS)


def get_executor(name: str) -> Executor:
    """The executor called `name`: local, slurm (submits and returns) or ray."""
    if name not in _BACKENDS:
        raise UserError(f"--executor {name!r} is not an executor; {closest(name, EXECUTORS)}")
    return _BACKENDS[name]
