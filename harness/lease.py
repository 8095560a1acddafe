"""Leases: which live run holds a cell, so that two runs on one store never train the same cell.

A lease is ``cells/<cell id>/lease.json``, created with a hard link from a private file: link(2)
fails when the name exists, atomically, on local disks, NFS (v2 and later) and Lustre, which
O_EXCL does not promise everywhere. The holder rewrites it every `heartbeat` seconds. Another run
takes it over when it is stale: its heartbeat is older than `ttl`, or it was taken on this host
by a process that is gone, or (SLURM) by an earlier start of the same job. Taking over renames the
stale file aside first and checks that what it moved is what it judged stale, so two runs taking
over at once cannot both win. Clocks of the hosts are assumed to agree to well under `ttl` (NTP).

The defaults (`ttl` 600 s, a heartbeat every 30 s) can be changed with REIDBENCH_LEASE_TTL.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.modes import as_created_file


def ttl_seconds() -> float:
    return float(os.environ.get("REIDBENCH_LEASE_TTL", "600"))


@dataclass(frozen=True)
class Holder:
    """What a lease file says: who holds the cell, and whether that still counts."""

    run_id: str
    owner: str  # runs with the same owner may take the lease over at once (a requeued SLURM job)
    host: str
    pid: int
    heartbeat_at: float
    token: str
    record: dict[str, Any]

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.heartbeat_at)

    def stale(self, ttl: float | None = None) -> bool:
        if self.host == socket.gethostname() and not _alive(self.pid):
            return True
        return self.age > (ttl_seconds() if ttl is None else ttl)

    def describe(self) -> str:
        return f"run {self.run_id} on {self.host} (pid {self.pid}), heartbeat {self.age:.0f} s ago"


def path(cell_dir: Path) -> Path:
    return Path(cell_dir) / "lease.json"


def read(cell_dir: Path) -> Holder | None:
    try:
        record = json.loads(path(cell_dir).read_text())
        return Holder(
            str(record["run_id"]),
            str(record.get("owner", record["run_id"])),
            str(record["host"]),
            int(record["pid"]),
            float(record["heartbeat_at"]),
            str(record["token"]),
            record,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # A torn or foreign file: treated as a lease that has gone stale (nothing could renew it).
        return Holder("unknown", "unknown", "unknown", -1, 0.0, "", {})


class Lease:
    """A lease this process holds; `heartbeat()` starts a thread that renews it."""

    def __init__(self, cell_dir: Path, run_id: str, owner: str, **details: Any):
        self.cell_dir, self.run_id, self.owner, self.details = Path(cell_dir), run_id, owner, details
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _text(self) -> str:
        return json.dumps(
            {
                "run_id": self.run_id,
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat_at": time.time(),
                "token": self.token,
                **self.details,
            },
            indent=2,
            sort_keys=True,
        )

    def _private(self) -> Path:
        self.cell_dir.mkdir(parents=True, exist_ok=True)
        mine = self.cell_dir / f".lease.{self.token}.tmp"
        mine.write_text(self._text())
        as_created_file(mine)
        return mine

    def try_acquire(self) -> Holder | None:
        """Take the lease; None when taken, else the live holder that keeps it."""
        for _ in range(5):
            mine = self._private()
            try:
                os.link(mine, path(self.cell_dir))
                return None
            except FileExistsError:
                pass
            finally:
                mine.unlink(missing_ok=True)
            holder = read(self.cell_dir)
            if holder is None:
                continue  # released meanwhile
            if holder.token == self.token:
                return None
            if not (holder.stale() or holder.owner == self.owner):
                return holder
            aside = self.cell_dir / f".lease.{self.token}.stale.tmp"
            try:
                os.rename(path(self.cell_dir), aside)
            except FileNotFoundError:
                continue
            moved = read_file(aside)
            if moved is not None and moved.get("token") != holder.token:  # another run took it over meanwhile
                try:
                    os.link(aside, path(self.cell_dir))
                except FileExistsError:
                    pass
            aside.unlink(missing_ok=True)
        return read(self.cell_dir)

    def renew(self) -> bool:
        """Rewrite the heartbeat; False when the lease is no longer ours (taken over as stale)."""
        holder = read(self.cell_dir)
        if holder is None or holder.token != self.token:
            return False
        mine = self._private()
        os.replace(mine, path(self.cell_dir))
        return True

    def heartbeat(self, every: float | None = None) -> Lease:
        every = every or max(1.0, ttl_seconds() / 20)

        def beat() -> None:
            while not self._stop.wait(every):
                try:
                    if not self.renew():
                        print(
                            f"reidbench: warning: the lease {path(self.cell_dir)} was taken over by another run",
                            flush=True,
                        )
                        return
                except OSError:
                    pass  # a slow or full file system: try again at the next beat

        self._thread = threading.Thread(target=beat, name="reidbench-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = read(self.cell_dir)
        if holder is not None and holder.token == self.token:
            path(self.cell_dir).unlink(missing_ok=True)


def read_file(file: Path) -> dict | None:
    try:
        return json.loads(Path(file).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether `pid` runs on this host. A zombie does not: a killed run whose processes were
    orphaned stays one until an init reaps it, which in containers may be never (PID 1 there is
    often not an init), and its lease must not keep the cell from the next run."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): signal 0 is all there is to go by
    return state not in ("Z", "X")
