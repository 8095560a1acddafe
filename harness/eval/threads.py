"""Python threads for the evaluation's small kernels, in place of OpenMP threads.

Re-ranking is thousands of small torch gathers, sorts and scatters. OpenMP threads end each of
those kernels at a barrier, and when the cores are shared with another busy process a thread that
waits there for a descheduled sibling wastes its time slice (see ``rerank._one_thread_per_kernel``). So
each kernel runs on one torch thread, and *independent pieces of work* run side by side on Python
threads instead: torch releases the GIL inside its kernels, and a descheduled thread delays only
its own piece. Every piece writes its own part of the outputs, so a result does not depend on the
number of threads or on the order in which they finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Workers:
    """A pool of ``count`` Python threads (none for 1: everything runs inline, in order)."""

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._pool = ThreadPoolExecutor(max_workers=self.count) if self.count > 1 else None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]``, the calls spread over the threads; results in ``items``' order."""
        if self._pool is None:
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

    def spans(self, total: int, align: int = 1) -> list[tuple[int, int]]:
        """``[0, total)`` cut into at most ``count`` contiguous spans whose inner bounds are multiples of ``align``."""
        per = -(-total // self.count)
        per = max(align, -(-per // align) * align)
        return [(s, min(s + per, total)) for s in range(0, total, per)] or [(0, 0)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


INLINE = Workers(1)
