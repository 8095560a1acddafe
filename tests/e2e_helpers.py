"""A tiny grid of one method on synthetic Market-1501, run through the `reidbench` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.spec import load_spec
from harness.store import Store

TINY_SPEC = """
[grid]
name = "{name}"
methods = ["{method}"]
backbones = ["resnet18"]
train_datasets = ["market1501"]

[train]
input_size = [64, 32]
iterations = 10
ids_per_batch = 4
images_per_id = 2
lr = 1e-3
warmup = 2
milestones = [8]
pretrained = false
num_workers = 0
eval_batch_size = 32
log_every = 5

[synthetic]
ids = 16

[resources]
world_size = 1
device = "cpu"
"""


def run_tiny_grid(root: Path, method: str) -> tuple[subprocess.CompletedProcess, list[dict], str]:
    """Run `method` (method:variant) for 10 steps; returns the run, its cell's rows and the cell id."""
    name = method.replace(":", "-")
    spec = root / f"{name}.toml"
    spec.write_text(TINY_SPEC.format(name=name, method=method))
    env = {**os.environ, "REIDBENCH_CACHE": str(root / "cache")}
    run = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(spec), "--store", "store"],
                         capture_output=True, text=True, env=env, cwd=root, timeout=900)
    (cell,) = load_spec(spec).cells
    rows = [r for r in Store(root / "store").read().rows if r["cell_id"] == cell.id] if run.returncode == 0 else []
    return run, rows, cell.id
