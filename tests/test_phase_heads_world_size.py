"""A fine-tuning phase with a new classifier trains the same on one process and on two DDP processes.

tests/test_world_size.py's tiny cell (augmentation on) as SPReID's baseline (`spreid:model-l`, the
method whose models can replace their classifier) in two phases: 2 steps on Market-1501, then 3 on
DukeMTMC-reID with `classifier = "new"` at its own `classifier_lr` (harness/engine/heads.py). On two
processes DDP must find the phase's unused classifier, every rank must build the same new one and
map the union's labels to the target's alike. The loss over all 5 steps, the test-time embeddings
and the kept model's classifier (the new one, 8 target identities) must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests import test_world_size as ws

pytestmark = pytest.mark.slow

PHASES = """
[[train.phases]]
iterations = 2
on = "train"

[[train.phases]]
iterations = 3
lr = 1e-4
on = "finetune"
classifier = "new"
classifier_lr = 1e-2  # moves the new classifier far beyond the tolerance in 3 steps
"""
SPEC = (
    ws.SPEC.replace('methods = ["baseline"]', 'methods = ["spreid:model-l"]')
    .replace(
        'train_datasets = ["market1501"]',
        'train_datasets = ["market1501"]\nfinetune_datasets = ["dukemtmc"]\n'
        'test_datasets = ["market1501"]  # the embeddings ws.differences compares',
    )
    .replace("iterations = 5\n", "")
    .replace("milestones = [4]", "milestones = []")
    .replace("{extra}\n", "{extra}\n" + PHASES)
    .replace("[method_options.baseline]", "[method_options.spreid]")
)
TARGET_IDS = 8  # the synthetic DukeMTMC-reID of 16 identities trains on 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return ws._Runs(tmp_path_factory.mktemp("heads-world-size"), SPEC)


def test_a_new_classifier_fine_tunes_the_same_on_one_and_two_processes(runs):
    (one, one_id), (two, two_id) = runs["one"], runs["two"]
    assert one_id == two_id
    assert [r["phase"] for r in one.read_metrics(one_id)] == [1, 1, 2, 2, 2]
    loss, embedding, measured = ws.differences(runs["one"], runs["two"])
    heads = [load_file(store.cell_dir(one_id) / "model.safetensors")["classifier.weight"] for store in (one, two)]
    assert heads[0].shape == heads[1].shape == (TARGET_IDS, 512)
    head = float(np.abs(heads[0] - heads[1]).max())
    measured += f"\nthe kept model's new classifier: max |difference| {head:.2e}"
    assert loss <= ws.LOSS_RTOL and embedding <= ws.EMBEDDING_ATOL and head <= ws.EMBEDDING_ATOL, (
        f"1 vs 2 processes:\n{measured}"
    )
    print(f"spreid:model-l with a new classifier, 1 vs 2 processes:\n{measured}")
