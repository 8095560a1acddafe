"""The ray executor on real Ray clusters.

A 2-worker cell whose second worker is killed mid-training (a local cluster started for the run):
Ray Train restarts the worker group and the training loop restores from the last checkpoint
reported through ray.train.report, so the cell ends with the steps and rows of an uninterrupted
run. And a cell of world size 2 across the two nodes of a cluster started with `ray start`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from harness import manifest
from harness.spec import load_spec
from harness.status import expected_rows
from harness.store import Store
from tests.helpers import cluster_spec, ray_cluster_of_two_nodes, reidbench, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_cell_whose_worker_is_killed_resumes_from_its_checkpoint(tmp_path):
    spec = cluster_spec(tmp_path, iterations=80)  # the kill lands at step 20-25: 55 steps of margin on a loaded machine
    (cell,) = load_spec(spec).cells
    store = Store(tmp_path / "store")
    env = {**os.environ, "RAY_ADDRESS": ""}  # no address: a local Ray cluster for the run
    run = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(spec), "--store", "store", "--executor", "ray"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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
    assert all(r["iterations"] == 80 and r["world_size"] == 2 and r["executor"] == "ray" for r in rows)
    assert (store.cell_dir(cell.id) / "ray" / "rank1.pid").read_text() != str(pid)  # a new worker took over
    assert manifest.read(store, cell.id)["attempts"] == 2 and manifest.read(store, cell.id)["state"] == "done"


def test_a_cell_of_world_size_2_runs_one_worker_on_each_of_two_nodes(tmp_path):
    """[ray] placement_strategy = "STRICT_SPREAD" puts each worker on a node of its own; the rows
    name both nodes (hostname and the Ray node's address: both nodes are this machine)."""
    spec = cluster_spec(tmp_path, iterations=20)
    text = spec.read_text().replace('device = "cpu"', 'device = "cpu"\ncollective_timeout = 5')
    spec.write_text(text + '\n[ray]\nplacement_strategy = "STRICT_SPREAD"\n\n[env]\nGLOO_SOCKET_IFNAME = "lo"\n')
    (cell,) = load_spec(spec).cells
    store = Store(tmp_path / "store")
    with ray_cluster_of_two_nodes() as env:
        run = reidbench(
            "run",
            spec,
            "--store",
            "store",
            "--executor",
            "ray",
            "--ray-address",
            env["RAY_ADDRESS"],
            cwd=tmp_path,
            env=env,
        )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert store.read_state(cell.id)["state"] == "done" and manifest.read(store, cell.id)["attempts"] == 1
    rows = [r for r in store.read().rows if r["cell_id"] == cell.id]
    assert sorted((r["test_dataset"], r["rerank"]) for r in rows) == sorted(expected_rows(cell))
    for row in rows:
        assert row["world_size"] == 2 and row["nodes"] == 2 and row["executor"] == "ray", row
        assert len(set(row["hosts"])) == 2 and any(host.endswith("(127.0.0.2)") for host in row["hosts"]), row["hosts"]
