"""GASM matched at its feature map's resolution inside evaluation: local features in files, top-k re-scoring.

The in-process test scores a small GASM (resnet18, 64 x 32 input: a 4 x 2 map, all of it matched) on
the synthetic Market-1501 through harness.engine.evaluate and compares it with the naive computation
of the same distances in memory; the slow one trains and evaluates it through `reidbench run` on two
processes, each writing its shard's rows into the shared files.
"""

from __future__ import annotations

import os

import pytest
import torch

from harness import data
from harness.data.synthetic import synthetic_root
from harness.engine import evaluate as evaluate_module
from harness.engine.dist import DistEnv
from harness.engine.evaluate import evaluate, extract, labels_of
from harness.eval.metrics import evaluate as evaluate_distances
from harness.spec import load_spec
from harness.store import Store
from methods import create_model
from methods.gasm_matching import dense_spatial_distance
from tests.helpers import cache_env, reidbench, write_spec

SIZE = (64, 32)  # resnet18 at last stride 1: a 4 x 2 feature map


def small_gasm(topk: int):
    torch.manual_seed(0)
    return create_model(
        "gasm", variant="full", backbone="resnet18", num_classes=8, pretrained=False, grid=[4, 2], topk=topk
    ).eval()


def test_the_spatial_path_gives_the_naive_top_k_distances_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    root = synthetic_root("market1501", ids=16, seed=0)
    test_set = data.load_dataset("market1501", root)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    model = small_gasm(topk=5)
    assert model.spatial
    options = dict(size=SIZE, stride=16, batch_size=8, num_workers=0)  # several batches per file
    scratch, scored = tmp_path / "spatial", []
    real = evaluate_module.evaluate_distances
    monkeypatch.setattr(evaluate_module, "evaluate_distances", lambda d, *a, **k: scored.append(d) or real(d, *a, **k))
    results = evaluate(model, test_set, env, "market1501", root, scratch=scratch, **options)
    assert not scratch.exists()  # the files are removed once scored

    q, g = extract(model, test_set, env, root, **options)  # the same rows, in memory
    (qg, ql, qh), (gg, gl, _) = model.split_rows(q), model.split_rows(g)
    naive = dense_spatial_distance(qg, gg, qh, ql, gl, topk=5, global_weight=model.global_weight)
    assert torch.allclose(scored[0], naive, atol=5e-3)  # float16 local features on disk
    expected = evaluate_distances(naive.numpy(), *labels_of(test_set), protocol="market")
    plain, _ = results[False]
    for metric in ("rank1", "mAP", "mINP"):
        assert plain[metric] == pytest.approx(expected[metric], abs=2e-3), metric  # float16 local features
    reranked, _ = results[True]
    assert reranked["rerank_distance"] == "own" and 0 < reranked["mAP"] <= 1


def test_topk_and_the_weight_are_checked():
    with pytest.raises(ValueError, match="topk must be a non-negative integer"):
        small_gasm(topk=-1)
    with pytest.raises(ValueError, match="global_weight must be from 0 to 1"):
        create_model("gasm", variant="full", backbone="resnet18", num_classes=8, pretrained=False, global_weight=2.0)
    assert not small_gasm(topk=0).spatial  # 0: every pair in memory, as before


@pytest.mark.slow
def test_two_processes_write_their_shards_and_the_cell_has_its_rows(tmp_path):
    spec = write_spec(
        tmp_path,
        "spatial",
        grid={"methods": ["gasm:full"]},
        train={"iterations": 6, "lr": 1e-3, "warmup": 2, "milestones": [4], "input_size": list(SIZE)},
        method_options={"gasm": {"grid": [4, 2], "topk": 5}},
        resources={"world_size": 2},
    )
    run = reidbench("run", spec, "--store", "store", cwd=tmp_path, env={**os.environ, **cache_env(tmp_path)})
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    (cell,) = load_spec(spec).cells
    rows = [r for r in Store(tmp_path / "store").read().rows if r["cell_id"] == cell.id]
    assert sorted(r["rerank"] for r in rows) == [False, True] and all(r["world_size"] == 2 for r in rows)
    assert all(0 < r["mAP"] <= 1 for r in rows)
    assert not list((tmp_path / "store").rglob("*.f16"))
