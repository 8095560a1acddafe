"""SCSN trains the same on one process and on two DDP processes (gloo on the CPU).

SCSN's specs share the paper's 192-image batch between processes (jobs/scsn*.toml). Its losses are
not the baseline's (tests/test_world_size.py): an ID and a batch-hard triplet loss per cascade
stage, on features that went through the stages' suppression of the most salient stripe, the SFE's
one-channel BatchNorm, the NMFF fusion's BatchNorm and the stage heads' BatchNorm1d. The same tiny
`scsn:stages-4` cell, augmentation on, runs through `reidbench run` with world_size 1 and 2; every
stage's loss terms over the first 5 steps and the test-time embeddings must agree. With sync_bn =
false the two-process run must differ: the comparison can fail.
"""

from __future__ import annotations

import pytest

from tests import test_world_size as ws

pytestmark = pytest.mark.slow

SPEC = (
    ws.SPEC.replace('methods = ["baseline"]', 'methods = ["scsn:stages-4"]')
    .replace("ids_per_batch = 4", "ids_per_batch = 6")
    .replace("lr = 1e-3", "lr = 1e-5")
    .replace("[method_options.baseline]", "[method_options.scsn]")
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr(ws, "SPEC", SPEC)
    return ws._Runs(tmp_path_factory.mktemp("scsn-world-size"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_scsn_on_one_and_two_processes_trains_the_same(runs):
    loss, embedding, measured = ws.differences(runs["one"], runs["two"])
    terms = [k for k in runs["one"][0].read_metrics(runs["one"][1])[0] if k not in ("step", "lr")]
    assert {f"id-{t}" for t in range(1, 5)} | {f"triplet-{t}" for t in range(1, 5)} <= set(terms), terms
    assert loss <= ws.LOSS_RTOL and embedding <= ws.EMBEDDING_ATOL, f"1 vs 2 processes:\n{measured}"
    print(f"scsn, 1 vs 2 processes (largest relative loss difference {loss:.1e}):\n{measured}")


def test_scsn_without_sync_bn_two_processes_train_differently(runs):
    loss, embedding, measured = ws.differences(runs["one"], runs["two-local-bn"])
    assert loss > ws.LOSS_RTOL and embedding > ws.EMBEDDING_ATOL, f"sync_bn = false should change SCSN:\n{measured}"
