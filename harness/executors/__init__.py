"""Executors: thin adapters that start the cell callable (harness.cell.run_cell) somewhere.

``local`` runs each cell's DDP processes on this machine; later executors submit the same callable
to SLURM (submitit) or to a Ray cluster (Ray Train).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.errors import UserError, closest
from harness.spec import Cell, Resources
from harness.store import Store


@dataclass(frozen=True)
class Outcome:
    cell_id: str
    ok: bool
    reason: str | None = None


Executor = Callable[[Sequence[Cell], Resources, Store], list[Outcome]]


EXECUTORS = ("local",)


def get_executor(name: str) -> Executor:
    if name == "local":
        from harness.executors.local import run_local

        return run_local
    raise UserError(f"--executor {name!r} is not an executor; {closest(name, EXECUTORS)}")
