"""A cell trains the same on one process and on two DDP processes (gloo on the CPU).

The same tiny cell, augmentation on, runs through `reidbench run` with world_size 1 and 2. Its loss
terms at each of the first 5 steps (the curve in the store's metrics.jsonl, averaged over ranks)
and its test-time embeddings must agree: the global P x K batches, each image's augmentation, the
BatchNorm statistics and the batch-hard triplet mining are those of the whole batch whichever rank
holds an image. With sync_bn = false the two-process run normalises each half-batch by itself, and
must differ: the comparison can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.spec import load_spec
from harness.store import Store

pytestmark = pytest.mark.slow

SPEC = """
[grid]
name = "world-size"
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]

[train]
input_size = [64, 32]
iterations = 5
ids_per_batch = 4
images_per_id = 2
lr = 1e-3
warmup = 0
milestones = [4]
num_workers = 0
eval_batch_size = 32
log_every = 1
check_every = 1
flip = 0.5
padding = 4
random_erasing = 0.5
{extra}

[synthetic]
ids = 16

[resources]
world_size = {world_size}
device = "cpu"

[method_options.baseline]
pretrained = false
"""
LOSS_RTOL, EMBEDDING_ATOL = 1e-4, 1e-3


def run(root: Path, name: str, world_size: int, extra: str = "", template: str | None = None) -> tuple[Store, str]:
    """`reidbench run` of `template` (default SPEC) at `world_size`, `extra` added to its [train]."""
    spec = root / f"{name}.toml"
    spec.write_text((template or SPEC).format(world_size=world_size, extra=extra))
    env = {**os.environ, "REIDBENCH_CACHE": str(root / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(spec), "--store", name],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (cell,) = load_spec(spec).cells
    return Store(root / name), cell.id


class _Runs(dict):
    """The runs, each made the first time a test asks for it."""

    WAYS = {"one": (1, ""), "two": (2, ""), "two-local-bn": (2, "sync_bn = false")}

    def __init__(self, root: Path, template: str | None = None):
        super().__init__()
        self.root, self.template = root, template

    def __missing__(self, name: str) -> tuple[Store, str]:
        self[name] = run(self.root, name, *self.WAYS[name], template=self.template)
        return self[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Store, str]]:
    return _Runs(tmp_path_factory.mktemp("world-size"))


def differences(a: tuple[Store, str], b: tuple[Store, str]) -> tuple[float, float, str]:
    """The largest relative difference of a loss term over the first 5 steps, the largest absolute
    difference of a test-time embedding, and both spelt out for an assertion message."""
    (store_a, id_a), (store_b, id_b) = a, b
    curve_a, curve_b = store_a.read_metrics(id_a), store_b.read_metrics(id_b)
    assert [r["step"] for r in curve_a] == [r["step"] for r in curve_b] == [1, 2, 3, 4, 5]
    lines, worst_loss = [], 0.0
    for ra, rb in zip(curve_a, curve_b):
        terms = {
            k: abs(ra[k] - rb[k]) / abs(ra[k]) for k in ra if k not in ("step", "lr", "phase", "images_per_second")
        }
        worst_loss = max(worst_loss, *terms.values())
        lines.append(
            f"step {ra['step']}: "
            + ", ".join(f"{k} {ra[k]:.7g} vs {rb[k]:.7g} (rel {d:.1e})" for k, d in terms.items())
        )
    emb_a, emb_b = store_a.read_embeddings(id_a, "market1501"), store_b.read_embeddings(id_b, "market1501")
    worst_embedding = max(
        float(np.abs(emb_a.query - emb_b.query).max()), float(np.abs(emb_a.gallery - emb_b.gallery).max())
    )
    lines.append(
        f"test-time embeddings: max |difference| {worst_embedding:.2e} (largest |value| {np.abs(emb_a.gallery).max():.3g})"
    )
    return worst_loss, worst_embedding, "\n".join(lines)


def test_one_and_two_processes_train_the_same_cell(runs):
    (_, one_id), (_, two_id) = runs["one"], runs["two"]
    assert one_id == two_id  # the world size is not part of the cell's identity ...
    rows = {store.read_row(cell_id, "market1501", False)["world_size"] for store, cell_id in (runs["one"], runs["two"])}
    assert rows == {1, 2}  # ... but each row records it
    loss, embedding, measured = differences(runs["one"], runs["two"])
    assert loss <= LOSS_RTOL and embedding <= EMBEDDING_ATOL, f"1 vs 2 processes:\n{measured}"
    print(f"1 vs 2 processes (largest relative loss difference {loss:.1e}):\n{measured}")


def test_without_sync_bn_two_processes_train_differently(runs):
    loss, embedding, measured = differences(runs["one"], runs["two-local-bn"])
    assert loss > LOSS_RTOL and embedding > EMBEDDING_ATOL, f"sync_bn = false should change the training:\n{measured}"
    print(f"1 process vs 2 with sync_bn = false (largest relative loss difference {loss:.1e}):\n{measured}")
