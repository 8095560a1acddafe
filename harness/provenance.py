"""Where a result came from: code version, software, machine."""

from __future__ import annotations

import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

import harness

_SOURCE = Path(harness.__file__).resolve().parent.parent


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def git_state() -> tuple[str | None, bool | None]:
    """The commit of reidbench's own source and whether tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None, None  # installed from a wheel, or git missing
    return sha, dirty


def environment(device: torch.device) -> dict[str, str | None]:
    return {
        "reidbench_version": harness.__version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "hostname": socket.gethostname(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
