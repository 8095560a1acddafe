"""Tiny grids of methods on synthetic Market-1501 (resnet18, 64x32, a few steps), run through the
`reidbench` command, for the methods' end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.spec import load_spec
from harness.store import Store

TINY_SPEC = """
[grid]
name = "{name}"
methods = {methods}
backbones = ["resnet18"]
train_datasets = ["market1501"]
test_datasets = {tests}

[train]
input_size = [64, 32]
iterations = {iterations}
ids_per_batch = 4
images_per_id = 2
lr = 1e-3
warmup = 2
milestones = [{milestone}]
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


def run_grid(root: Path, methods: list[str], *, tests: tuple[str, ...] = ("market1501",),
             iterations: int = 10) -> tuple[subprocess.CompletedProcess, dict[str, list[dict]]]:
    """Run `methods` (method:variant each) for `iterations` steps and test them on `tests`;
    returns the run and each cell's rows by "method:variant"."""
    name = "-".join(m.replace(":", "-") for m in methods)
    spec = root / f"{name}.toml"
    spec.write_text(TINY_SPEC.format(name=name, methods=json.dumps(methods), tests=json.dumps(list(tests)),
                                     iterations=iterations, milestone=iterations - 2))
    env = {**os.environ, "REIDBENCH_CACHE": str(root / "cache")}
    run = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(spec), "--store", "store"],
                         capture_output=True, text=True, env=env, cwd=root, timeout=900)
    rows = Store(root / "store").read().rows if run.returncode == 0 else []
    cells = {f"{c.method}:{c.variant}": c.id for c in load_spec(spec).cells}
    return run, {m: [r for r in rows if r["cell_id"] == cell_id] for m, cell_id in cells.items()}


def run_tiny_grid(root: Path, method: str) -> tuple[subprocess.CompletedProcess, list[dict], str]:
    """Run one `method` (method:variant) for 10 steps; returns the run, its cell's rows and the cell id."""
    run, rows = run_grid(root, [method])
    (cell,) = load_spec(next(root.glob("*.toml"))).cells
    return run, rows[method], cell.id
