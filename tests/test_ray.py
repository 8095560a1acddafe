"""The ray executor on a real Ray cluster (a local one, started for the run).

A 2-worker cell whose second worker is killed mid-training: Ray Train restarts the worker group
and the training loop restores from the last checkpoint reported through ray.train.report, so
the cell ends with the steps and rows of an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from cluster_helpers import tiny_spec, wait_for

from harness import manifest
from harness.cell import expected_rows
from harness.spec import load_spec
from harness.store import Store

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_cell_whose_worker_is_killed_resumes_from_its_checkpoint(tmp_path):
    spec = tiny_spec(tmp_path, iterations=200)  # long enough that the kill lands mid-training on a loaded machine
    (cell,) = load_spec(spec).cells
    store = Store(tmp_path / "store")
    env = {**os.environ, "RAY_ADDRESS": ""}  # no address: a local Ray cluster for the run
    run = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(spec), "--store", "store", "--executor", "ray"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        storage = store.root / "ray" / cell.id
        # A second checkpoint folder means the first one is registered with Ray Train (folders only:
        # Ray's checkpoint_manager_snapshot.json matches the pattern too).
        folders = lambda: [p for p in storage.glob("checkpoint_*") if p.is_dir()]  # noqa: E731
        wait_for(lambda: len(folders()) >= 2, "two checkpoints in Ray's storage", timeout=300, every=0.2)
        pid = int((store.cell_dir(cell.id) / "ray" / "rank1.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        output, _ = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-4000:]
    resumed = [int(step) for step in re.findall(r"resumed from the checkpoint at step (\d+)", output)]
    assert resumed and min(resumed) >= 10, output[-4000:]
    rows = [r for r in store.read().rows if r["cell_id"] == cell.id]
    assert sorted((r["test_dataset"], r["rerank"]) for r in rows) == sorted(expected_rows(cell))
    assert all(r["iterations"] == 200 and r["world_size"] == 2 and r["executor"] == "ray" for r in rows)
    assert (store.cell_dir(cell.id) / "ray" / "rank1.pid").read_text() != str(pid)  # a new worker took over
    assert manifest.read(store, cell.id)["attempts"] == 2 and manifest.read(store, cell.id)["state"] == "done"
