"""File modes for a store and a cache that a team shares.

`tempfile.mkstemp` and `mkdtemp` create 0600 files and 0700 folders whatever the umask, and a
rename keeps that mode: a store written through them is unreadable to colleagues. Every file we
write under a temporary name gets the mode a plain `open()` would have given it instead,
``0o666 & ~umask`` (folders ``0o777 & ~umask``), so a group-shared folder with umask 002 works.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _lock:  # elsewhere: set and restore (not thread-safe against other writers of the umask)
        old = os.umask(0o022)
        os.umask(old)
    return old


def as_created_file(path: str | os.PathLike) -> None:
    """Give a file made by mkstemp the mode open() would have given it."""
    os.chmod(path, 0o666 & ~umask())


def as_created_dir(path: str | os.PathLike) -> None:
    """Give a folder made by mkdtemp the mode mkdir() would have given it."""
    os.chmod(path, 0o777 & ~umask())
