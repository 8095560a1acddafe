"""What every executor shares: the interface the runner calls, its outcomes, and failure classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from harness.spec import Cell, RayConfig, Resources, SlurmConfig
from harness.store import Store


@dataclass(frozen=True)
class Outcome:
    """How a cell ended, or that it was submitted (SLURM: its result comes later, `reidbench status`)."""

    cell_id: str
    ok: bool
    reason: str | None = None
    submitted: bool = False
    skipped: bool = False  # another live run holds the cell (its lease): left to it, `reason` says who


class Executor(Protocol):
    """Run (or submit) cells; every backend takes every backend's settings and reads its own."""

    def __call__(
        self, cells: Sequence[Cell], resources: Resources, store: Store, *, slurm: SlurmConfig, ray: RayConfig
    ) -> list[Outcome]: ...


# Kinds a recorded reason may already carry: the cell's pre-flight and its watchdog name theirs
# (harness/engine/cell.py), and a timed-out collective is named as such however the backend words it.
KINDS = ("time limit", "OOM", "NaN", "NCCL/collective timeout", "pre-flight")
_TIMEOUT_WORDS = ("Watchdog caught collective operation timeout", "Timed out waiting", "timed out waiting")


def classify(reason: str) -> str:
    """Prefix a recorded failure with its kind: OOM, NaN, NCCL/collective timeout, pre-flight or code error."""
    if reason.startswith(KINDS):
        return reason
    if "OutOfMemory" in reason or "out of memory" in reason:
        return f"OOM: {reason}"
    if "non-finite" in reason:
        return f"NaN: {reason}"
    if any(words in reason for words in _TIMEOUT_WORDS):
        return f"NCCL/collective timeout: {reason}"
    return f"code error: {reason}"
