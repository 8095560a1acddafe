"""A rank that waits too long in a collective ends its cell, saying which rank waited for which.

A hung collective never returns: NCCL's own watchdog then kills the process with a line in the
log that names no peer, and gloo raises a bare "Timed out waiting ... for recv". So each rank
marks where it is (`Watchdog.at`: a training step, a gather of features) in plain Python, at no
cost to the step, and a background thread publishes that position every few seconds in the
process group's key-value store. When this rank has stayed at one position for the collective
timeout, the thread reads every rank's last position and calls `on_timeout` with one line:

    rank 0 on host vm waited 30 min at training step 38 for rank 1 on host vm-2 (silent for
    29 min, last at training step 37: its process hangs, was stopped or lost the network)

It fires a few seconds before the backend's own timeout (init_process_group's `timeout`, the same
`[resources] collective_timeout`), so that the reason is recorded before NCCL aborts the process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import torch.distributed as dist

_KEY = "reidbench/watch/{rank}"


class Watchdog:
    """Publishes this rank's position and calls `on_timeout(line)` once it has stood still too long."""

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        host: str,
        timeout_s: float,
        on_timeout: Callable[[str], None],
        store: dist.Store | None = None,
    ):
        self.rank, self.world_size, self.host, self.timeout_s = rank, world_size, host, timeout_s
        self.on_timeout = on_timeout
        self.store = store if store is not None else _default_store()
        # Check often enough to fire before the backend's timeout, rarely enough to cost nothing.
        self.interval = min(10.0, max(0.2, timeout_s / 20))
        self._where = (0, "starting", time.monotonic(), False)  # (point, label, since, waiting): replaced whole
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reidbench-watchdog", daemon=True)

    def at(self, point: int, label: str, *, waiting: bool = True) -> None:
        """This rank is now at `label`; `point` orders positions (a later place has a larger point).

        `waiting`: the position holds a collective, which the timeout bounds; a rank's own work
        (loading a batch, extracting features, scoring on rank 0) may take longer and never fires.
        """
        self._where = (point, label, time.monotonic(), waiting)

    def __enter__(self) -> Watchdog:
        if self.world_size > 1:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            point, label, since, waiting = self._where
            self._publish(point, label)
            waited = time.monotonic() - since
            if waiting and waited >= self.timeout_s - 2 * self.interval:
                self.on_timeout(self.diagnose(point, label, waited))
                return

    def _publish(self, point: int, label: str) -> None:
        if self.store is None:
            return
        record = {"point": point, "label": label, "host": self.host, "time": time.time()}
        try:
            self.store.set(_KEY.format(rank=self.rank), json.dumps(record))
        except Exception:  # the store went away with rank 0: the backend reports that
            pass

    def positions(self) -> dict[int, dict | None]:
        """Every other rank's last published position (None: it never published one)."""
        out: dict[int, dict | None] = {}
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            key = _KEY.format(rank=rank)
            try:
                out[rank] = (
                    json.loads(self.store.get(key)) if self.store is not None and self.store.check([key]) else None
                )
            except Exception:
                out[rank] = None
        return out

    def diagnose(self, point: int, label: str, waited: float) -> str:
        """The line that says which rank waited where, for which ranks and where those are."""
        head = f"rank {self.rank} on host {self.host} waited {_duration(waited)} at {label}"
        if self.store is None:
            return f"{head}; the other ranks' positions are unknown (no key-value store)"
        now, quiet = time.time(), 3 * self.interval + 5
        others = self.positions()
        blamed = []
        for rank, where in sorted(others.items()):
            if where is None:
                blamed.append(f"rank {rank} (never reported: did it start?)")
            elif now - where["time"] > quiet:
                blamed.append(
                    f"rank {rank} on host {where['host']} (silent for {_duration(now - where['time'])}, last at "
                    f"{where['label']}: its process hangs, was stopped or lost the network)"
                )
            elif (where["point"], where["label"]) != (point, label) and where["point"] <= point:
                blamed.append(f"rank {rank} on host {where['host']} (at {where['label']})")
        if blamed:
            return f"{head} for {', '.join(blamed)}"
        return (
            f"{head}; every rank reached it, so the collective itself did not complete: check the network between "
            f"the nodes (NCCL_SOCKET_IFNAME, NCCL_IB_DISABLE in the spec's [env]; NCCL_DEBUG=INFO shows more)"
        )


def _default_store() -> dist.Store | None:
    """The process group's key-value store (rank 0 serves it), which every rank already reaches."""
    if not dist.is_initialized():
        return None
    try:
        return dist.distributed_c10d._get_default_store()  # no public accessor; the watchdog works without it
    except (AttributeError, RuntimeError, ValueError):
        return None


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
