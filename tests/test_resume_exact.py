"""A run killed mid-phase (SIGKILL to the whole process group) and run again ends bit-identical to
the uninterrupted run, with and without DataLoader workers: the real `reidbench` command, real
DDP worker processes, a real kill, real files (issue 21, item 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.spec import load_spec
from harness.store import Store

pytestmark = pytest.mark.slow

SPEC = """
[grid]
name = "exact"
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]

[train]
input_size = [32, 16]
iterations = 6
ids_per_batch = 4
images_per_id = 2
lr = 1e-3
warmup = 2
milestones = [4]
num_workers = {workers}
eval_batch_size = 64
log_every = 1
check_every = 1
checkpoint_every = 2

[method_options.baseline]
pretrained = false

[synthetic]
ids = 16

[resources]
world_size = 1
device = "cpu"
"""


def command(root: Path, workers: int, store: str) -> list[str]:
    spec = root / f"exact{workers}.toml"
    spec.write_text(SPEC.format(workers=workers))
    return [sys.executable, "-m", "harness.cli", "run", str(spec), "--store", store, "--reports", "reports"]


def killed_at_checkpoint(args: list[str], root: Path, env: dict, step: int) -> str:
    """Run until "checkpoint at step `step`" is printed, then SIGKILL the launcher and its workers."""
    process = subprocess.Popen(
        args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    seen = []
    for line in process.stdout:
        seen.append(line)
        if f"checkpoint at step {step}" in line:
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    time.sleep(1)
    return "".join(seen)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    env = {**os.environ, "REIDBENCH_CACHE": str(root / "cache")}
    straight = subprocess.run(
        command(root, 0, "straight"), cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    assert straight.returncode == 0, straight.stdout + straight.stderr
    return root, env


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_killed_mid_phase_resumes_bit_identical(work, workers):
    root, env = work
    store = f"killed{workers}"
    before = killed_at_checkpoint(command(root, workers, store), root, env, step=2)
    assert "checkpoint at step 2" in before and "market1501:" not in before
    again = subprocess.run(
        command(root, workers, store), cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert (
        "resumed from the checkpoint at step 2" in again.stdout
        or "resumed from the checkpoint at step 4" in again.stdout
    )

    (cell,) = load_spec(root / f"exact{workers}.toml").cells
    rows = {s: {r["rerank"]: r for r in Store(root / s).read().rows} for s in ("straight", store)}
    assert {r["run_id"] for r in rows[store].values()} == {Store(root / store).published_run(cell.id)}
    for rerank in (False, True):
        a, b = rows["straight"][rerank], rows[store][rerank]
        assert (a["mAP"], a["rank1"], a["cmc"]) == (b["mAP"], b["rank1"], b["cmc"]), rerank  # bit-identical
    ea, eb = (Store(root / s).read_embeddings(cell.id, "market1501") for s in ("straight", store))
    assert np.array_equal(ea.query, eb.query) and np.array_equal(ea.gallery, eb.gallery)
