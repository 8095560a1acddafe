"""Evaluation-time combinations ([[combine]]): spec validation, the combined metrics against a
direct computation, idempotence, parts that are not done, and one end-to-end run."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.combine import combination_statuses, combined_embeddings, run_combinations
from harness.errors import UserError
from harness.eval.metrics import evaluate
from harness.eval.rerank import rerank
from harness.spec import Resources, load_spec
from harness.store import SCHEMA, Embeddings, Store
from tests.helpers import cache_env, reidbench

SPEC = """
[grid]
name = "cmb"
methods = ["baseline"]
backbones = ["resnet18", "resnet50"]
train_datasets = ["market1501"]
test_datasets = ["market1501", "dukemtmc"]
seeds = [0, 1]

[train]
iterations = 10

[[combine]]
name = "pair"
method = "baseline"
parts = ["baseline:bnneck/resnet18", "baseline/resnet50"]
"""


def write(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(textwrap.dedent(text))
    return path


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as caught:
        load_spec(write(tmp_path, text))
    return str(caught.value)


# -- the spec ----------------------------------------------------------------------------------


def test_a_combination_expands_over_training_sets_and_seeds(tmp_path):
    spec = load_spec(write(tmp_path))
    assert len(spec.cells) == 4 and len(spec.combinations) == 2  # one per seed
    for combo in spec.combinations:
        assert [c.backbone for c in combo.parts] == ["resnet18", "resnet50"]
        assert {c.seed for c in combo.parts} == {combo.seed}
        assert combo.backbone == "resnet18+resnet50" and combo.variant == "pair" and combo.method == "baseline"
        assert combo.test_datasets == ("market1501", "dukemtmc")
        assert combo.id not in {c.id for c in spec.cells} and len(combo.id) == 12
    assert len({c.id for c in spec.combinations}) == 2
    # Its id follows its parts and settings, not the grid's name.
    again = load_spec(write(tmp_path, SPEC.replace('name = "cmb"', 'name = "other"')))
    assert [c.id for c in again.combinations] == [c.id for c in spec.combinations]
    plain = load_spec(write(tmp_path, SPEC.replace("parts = [", 'normalize = "none"\nparts = [')))
    assert {c.id for c in plain.combinations}.isdisjoint({c.id for c in spec.combinations})


def test_keeping_embeddings_is_not_part_of_a_cells_id(tmp_path):
    ids = [c.id for c in load_spec(write(tmp_path)).cells]
    without = SPEC.split("[[combine]]")[0].replace("iterations = 10", "iterations = 10\nkeep_embeddings = false")
    assert [c.id for c in load_spec(write(tmp_path, without)).cells] == ids


@pytest.mark.parametrize(
    "change, expected",
    [
        ('"baseline/resnet50"]', "line 16: part 'baseline/resnet5' is not a cell of the grid"),
        ('"baseline/resnet50"]', "did you mean 'baseline:bnneck/resnet50'"),
    ],
)
def test_a_part_that_is_not_a_cell_names_its_line_and_the_closest_cells(tmp_path, change, expected):
    assert expected in error(tmp_path, SPEC.replace(change, '"baseline/resnet5"]'))


@pytest.mark.parametrize(
    "replace, with_, expected",
    [
        (
            'method = "baseline"\nparts',
            'method = "baselin"\nparts',
            "line 15: unknown method 'baselin' for the combination's rows; did you mean 'baseline'?",
        ),
        (
            'name = "pair"',
            'name = "pair"\nnormalise = "l2"',
            "line 15: unknown key 'normalise' in [[combine]]; did you mean 'normalize'?",
        ),
        ('name = "pair"', 'name = "pair"\nnormalize = "l1"', "line 15: unknown normalize 'l1'"),
        ('name = "pair"\n', "", "[[combine]] needs name"),
        ('name = "pair"', 'name = "a pair"', "name must be a variant name"),
        (
            '"baseline/resnet50"]',
            '"baseline:bnneck/resnet18"]',
            "line 16: part 'baseline:bnneck/resnet18' is listed twice",
        ),
        (', "baseline/resnet50"]', "]", "parts must list at least two cells"),
        ("[[combine]]", "[combine]", "line 13: combinations are an array of tables: write each one as [[combine]]"),
        (
            "iterations = 10",
            "iterations = 10\nkeep_embeddings = false",
            "line 12: [[combine]] needs the cells' embeddings",
        ),
    ],
)
def test_spec_errors(tmp_path, replace, with_, expected):
    assert replace in SPEC
    assert expected in error(tmp_path, SPEC.replace(replace, with_))


def test_errors_point_into_the_right_combine_table(tmp_path):
    text = (
        SPEC
        + """
[[combine]]
name = "pair-again"
method = "baseline"
parts = [
    "baseline/resnet18",
    "baseline/resnet152",
]
"""
    )
    message = error(tmp_path, text)
    assert "line 23: part 'baseline/resnet152' is not a cell of the grid" in message, message
    same = (
        SPEC + '\n[[combine]]\nname = "pair"\nmethod = "baseline"\nparts = ["baseline/resnet18", "baseline/resnet50"]\n'
    )
    assert "line 18: the same combination is listed twice" in error(tmp_path, same)
    other_normalisation = (
        SPEC
        + '\n[[combine]]\nname = "pair"\nmethod = "baseline"\nnormalize = "none"\nparts = ["baseline/resnet18", "baseline/resnet50"]\n'
    )
    assert (
        "line 19: two combinations would write rows of the same identity (baseline:pair, resnet18+resnet50)"
        in error(tmp_path, other_normalisation)
    )


# -- computing ---------------------------------------------------------------------------------


def fake_embeddings(rng: np.random.Generator, dim: int, scale: float, pids_q, pids_g, cams_q, cams_g) -> Embeddings:
    """Embeddings that cluster by identity, at a given scale, as a trained cell would keep them."""
    centres = rng.normal(size=(100, dim))

    def embed(pids):
        return ((centres[pids] + 1.5 * rng.normal(size=(len(pids), dim))) * scale).astype(np.float32)

    return Embeddings(embed(pids_q), embed(pids_g), pids_q, pids_g, cams_q, cams_g)


def labels(rng: np.random.Generator):
    pids_q, pids_g = np.repeat(np.arange(1, 21), 2), np.repeat(np.arange(1, 31), 4)
    cams_q, cams_g = np.tile([0, 1], 20), rng.integers(0, 4, size=len(pids_g))
    return pids_q, pids_g, cams_q, cams_g


def fake_row(cell, test: str, rerank: bool, iterations: int) -> dict:
    row = {name: None for name in SCHEMA.names}
    return {
        **row,
        "schema_version": 1,
        "cell_id": cell.id,
        "test_dataset": test,
        "rerank": rerank,
        "iterations": iterations,
        "train_seconds": 2.0 * iterations,
        "git_sha": "abc",
    }


def finish(store: Store, cell, parts: dict[str, Embeddings] | None, iterations: int = 10) -> None:
    """Write what a finished cell leaves in the store: its rows and (with `parts`) its embeddings."""
    for test in cell.test_datasets:
        for rr in (False, True):
            store.write_row(fake_row(cell, test, rr, iterations))
        if parts is not None:
            store.write_embeddings(cell.id, test, parts[test])


@pytest.fixture()
def grid(tmp_path):
    """The spec's first combination with hand-built embeddings for both parts, on two test sets."""
    spec, store = load_spec(write(tmp_path)), Store(tmp_path / "store")
    combo = spec.combinations[0]
    rng = np.random.default_rng(0)
    kept = {}
    for i, cell in enumerate(combo.parts):
        per_test = {}
        for test in cell.test_datasets:
            ids = labels(np.random.default_rng(len(test)))
            per_test[test] = fake_embeddings(
                rng, dim=8 * (i + 1), scale=100.0**i, pids_q=ids[0], pids_g=ids[1], cams_q=ids[2], cams_g=ids[3]
            )
        kept[cell.id] = per_test
    return spec, store, combo, kept


def direct(parts: list[Embeddings], normalize: bool) -> tuple[dict, dict]:
    """Plain and re-ranked metrics of the concatenated embeddings, computed here with numpy."""

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x

    q = np.concatenate([unit(p.query.astype(np.float64)) for p in parts], axis=1)
    g = np.concatenate([unit(p.gallery.astype(np.float64)) for p in parts], axis=1)
    dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # noqa: E731
    ids = (parts[0].query_pids, parts[0].gallery_pids, parts[0].query_camids, parts[0].gallery_camids)
    plain = evaluate(dist(q, g), *ids, protocol="market")
    # re-ranked as a cell's rows are by default: the reference given squared Euclidean distances (torchreid's)
    reranked = evaluate(rerank(dist(q, g) ** 2, dist(q, q) ** 2, dist(g, g) ** 2), *ids, protocol="market")
    return plain, reranked


def test_combined_metrics_equal_a_direct_computation_on_normalised_concatenated_embeddings(grid):
    spec, store, combo, kept = grid
    for cell in combo.parts:
        finish(store, cell, kept[cell.id], iterations=10 if cell.backbone == "resnet18" else 30)
    [status] = [s for s in combination_statuses(spec.combinations, store) if s.combination.id == combo.id]
    assert status.state == "ready"
    outcomes = run_combinations(spec.combinations, store, Resources(device="cpu"), log=lambda m: None)
    assert [o.ok for o in outcomes] == [True]  # the other seed's parts are not done: left waiting
    rows = [r for r in store.read().rows if r["cell_id"] == combo.id]
    assert len(rows) == 4  # 2 test sets x plain / re-ranked
    for test in combo.test_datasets:
        parts = [kept[c.id][test] for c in combo.parts]
        plain, reranked = direct(parts, normalize=True)
        unnormalised, _ = direct(parts, normalize=False)
        assert unnormalised["mAP"] != pytest.approx(
            plain["mAP"], abs=1e-3
        )  # so the test would see a missing normalisation
        for expected, rr in ((plain, False), (reranked, True)):
            row = next(r for r in rows if r["test_dataset"] == test and r["rerank"] is rr)
            for metric in ("mAP", "mAP_official", "mINP", "rank1", "rank5", "rank10"):
                assert row[metric] == pytest.approx(expected[metric], abs=1e-6), (test, rr, metric)
            assert row["rerank_distance"] == ("squared-euclidean" if rr else None)
            assert row["cmc"] == pytest.approx(list(expected["cmc"]), abs=1e-6)
            assert (row["method"], row["variant"], row["backbone"]) == ("baseline", "pair", "resnet18+resnet50")
            assert (row["train_dataset"], row["seed"], row["synthetic"], row["grid"]) == ("market1501", 0, True, "cmb")
            assert (row["num_query"], row["num_gallery"], row["iterations"]) == (40, 120, 40)
            assert row["train_images_per_second"] is None and row["protocol"] == "market"
            config = json.loads(row["config"])
            assert [p["cell_id"] for p in config["combination"]["parts"]] == [c.id for c in combo.parts]
            assert config["combination"]["normalize"] == "l2"


def test_l2_concatenation_gives_each_part_unit_norm():
    a = Embeddings(
        np.array([[3.0, 4.0]], np.float32), np.array([[0.0, 2.0]], np.float32), *(np.zeros(1, np.int64),) * 4
    )
    b = Embeddings(
        np.array([[10.0, 0.0, 0.0]], np.float32), np.array([[1.0, 1.0, 1.0]], np.float32), *(np.zeros(1, np.int64),) * 4
    )
    query, gallery = combined_embeddings([a, b], "l2")
    assert torch.allclose(query, torch.tensor([[0.6, 0.8, 1.0, 0.0, 0.0]]))
    assert torch.allclose(gallery[:, :2].norm(dim=1), torch.ones(1)) and torch.allclose(
        gallery[:, 2:].norm(dim=1), torch.ones(1)
    )
    assert torch.equal(combined_embeddings([a, b], "none")[0], torch.tensor([[3.0, 4.0, 10.0, 0.0, 0.0]]))


def test_a_stored_combination_is_skipped_until_a_part_runs_again(grid):
    spec, store, combo, kept = grid
    for cell in combo.parts:
        finish(store, cell, kept[cell.id])
    first = run_combinations(spec.combinations, store, Resources(device="cpu"), log=lambda m: None)
    assert len(first) == 1
    run = store.published_run(combo.id)
    paths = sorted((store.root / "rows" / combo.id / run).iterdir())
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert run_combinations(spec.combinations, store, Resources(device="cpu"), log=lambda m: None) == []
    assert [p.stat().st_mtime_ns for p in paths] == stamps and len(paths) == 4
    # A part that ran again (newer embeddings) makes the combination due again; its rows are replaced.
    later = store.embeddings_path(combo.parts[1].id, "dukemtmc")
    os.utime(later, ns=(stamps[0] + 10**9, stamps[0] + 10**9))
    [status] = [s for s in combination_statuses(spec.combinations, store) if s.combination.id == combo.id]
    assert status.state == "ready" and "ran again" in status.detail
    assert len(run_combinations(spec.combinations, store, Resources(device="cpu"), log=lambda m: None)) == 1
    rows = [r for r in store.read().rows if r["cell_id"] == combo.id]
    assert len(rows) == 4 and {r["run_id"] for r in rows} == {store.published_run(combo.id)} != {run}
    assert not (store.root / "rows" / combo.id / run).exists()  # the earlier set is gone, not mixed in


def test_parts_not_done_leave_the_combination_waiting_not_failed(grid, capsys):
    spec, store, combo, kept = grid
    finish(store, combo.parts[0], kept[combo.parts[0].id])
    states = {s.combination.id: s for s in combination_statuses(spec.combinations, store)}
    assert states[combo.id].state == "waiting" and combo.parts[1].id in states[combo.id].detail
    assert combo.parts[0].id not in states[combo.id].detail
    assert run_combinations(spec.combinations, store, Resources(device="cpu"), log=lambda m: None) == []
    assert not (store.root / "rows" / combo.id).exists() and store.read_state(combo.id) is None
    assert main(["combine", str(spec.path), "--store", str(store.root)]) == 0
    assert (
        f"combination {combo.id} (baseline:pair): waiting for part(s) baseline:bnneck/resnet50"
        in capsys.readouterr().out
    )
    assert main(["run", str(spec.path), "--store", str(store.root), "--dry-run"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(combo.id))
    assert "waiting" in listed and "baseline:pair" in listed and not (store.root / "rows" / combo.id).exists()
    # Done without embeddings (kept off): it cannot be computed, and says what to do.
    finish(store, combo.parts[1], None)
    states = {s.combination.id: s for s in combination_statuses(spec.combinations, store)}
    assert states[combo.id].state == "missing embeddings" and "remove" in states[combo.id].detail


def test_parts_tested_on_different_images_fail_with_the_reason_and_status_shows_it(grid, capsys):
    spec, store, combo, kept = grid
    finish(store, combo.parts[0], kept[combo.parts[0].id])
    other = dict(kept[combo.parts[1].id])
    e = other["market1501"]
    other["market1501"] = Embeddings(
        e.query, e.gallery, e.query_pids[::-1].copy(), e.gallery_pids, e.query_camids, e.gallery_camids
    )
    finish(store, combo.parts[1], other)
    assert main(["combine", str(spec.path), "--store", str(store.root)]) == 1
    assert "query_pids differ" in capsys.readouterr().err
    assert main(["status", str(spec.path), "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(combo.id))
    assert "failed" in line and "query_pids differ" in line and "resnet18+resnet50" in line


def test_cells_keep_embeddings_that_round_trip(tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(1)
    e = fake_embeddings(rng, 5, 1.0, *labels(rng))
    path = store.write_embeddings("abc", "market1501", e)
    assert path == tmp_path / "cells" / "abc" / "embeddings" / "market1501.npz" and not list(path.parent.glob(".*"))
    back = store.read_embeddings("abc", "market1501")
    assert back.metric == "euclidean" and back.query.dtype == np.float32
    for key in ("query", "gallery", "query_pids", "gallery_pids", "query_camids", "gallery_camids"):
        assert np.array_equal(getattr(back, key), getattr(e, key))
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="unreadable embeddings file"):
        store.read_embeddings("abc", "market1501")


# -- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_trains_the_cells_then_writes_the_combination_rows(tmp_path, make_spec):
    spec_path = make_spec(
        "combine-e2e",
        grid={"backbones": ["resnet18", "resnet50"]},
        train={"eval_batch_size": 64},
        combine=[{"name": "pair", "method": "baseline", "parts": ["baseline/resnet18", "baseline/resnet50"]}],
    )
    command = ("run", spec_path, "--store", "store")
    run = reidbench(*command, cwd=tmp_path, env=cache_env(tmp_path))
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    spec, store = load_spec(spec_path), Store(tmp_path / "store")
    (combo,) = spec.combinations
    rows = store.read().rows
    mine = [r for r in rows if r["cell_id"] == combo.id]
    assert sorted(r["rerank"] for r in mine) == [False, True]
    assert {(r["variant"], r["backbone"]) for r in mine} == {("pair", "resnet18+resnet50")}
    for cell in spec.cells:
        kept = store.read_embeddings(cell.id, "market1501")
        part = next(r for r in rows if r["cell_id"] == cell.id and not r["rerank"])
        assert kept.query.shape == (part["num_query"], 512 if cell.backbone == "resnet18" else 2048)
        assert kept.gallery.shape[0] == part["num_gallery"]
    assert "resnet18+resnet50" in run.stdout  # the grid's results table shows the combination
    again = reidbench(*command, cwd=tmp_path, env=cache_env(tmp_path))
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stderr
    assert len([r for r in store.read().rows if r["cell_id"] == combo.id]) == 2  # never duplicated
    status = reidbench("status", spec_path, "--store", "store", cwd=tmp_path, env=cache_env(tmp_path), timeout=300)
    line = next(line for line in status.stdout.splitlines() if line.startswith(combo.id))
    assert "done" in line and "baseline:pair" in line
