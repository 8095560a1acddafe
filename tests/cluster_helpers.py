"""Shared pieces of the cluster tests: tiny grid specs, the CLI as a subprocess, waiting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

TINY = """
[grid]
name = "{name}"
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]
seeds = {seeds}

[train]
input_size = [64, 32]
iterations = {iterations}
ids_per_batch = 4
images_per_id = 2
pretrained = false
num_workers = 0
eval_batch_size = 32
log_every = 5
checkpoint_every = {checkpoint_every}
{train_extra}

[synthetic]
ids = 16

[resources]
world_size = 2
device = "cpu"

[slurm]
time = {time}
max_requeues = {max_requeues}
"""


def tiny_spec(folder: Path, *, seeds=(0,), iterations=30, checkpoint_every=10, time=60, max_requeues=3,
              train_extra: str = "", name: str | None = None) -> Path:
    """A grid of resnet18 cells on 16 synthetic ids at 64 x 32, each a 2-process DDP job on the CPU."""
    name = name or f"t{uuid.uuid4().hex[:8]}"
    path = folder / f"{name}.toml"
    path.write_text(TINY.format(name=name, seeds=list(seeds), iterations=iterations, checkpoint_every=checkpoint_every,
                                time=time, max_requeues=max_requeues, train_extra=train_extra))
    return path


def reidbench(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env or os.environ.copy(), timeout=timeout)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 300, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
