"""View cells: a variant that is another variant's trained model inferred otherwise (DSA-reID's
global-joint, local-joint and two-streams-fused of `full`) trains once with it (harness/runner.py
`carry_views`, harness/engine/cell.py `model_source`)."""

from __future__ import annotations

import pytest
import torch

import methods
from harness import lease
from harness.engine.cell import evaluates_only, model_source
from harness.runner import carry_views, todo, with_views
from harness.spec import load_spec
from harness.status import cell_statuses, log_files
from harness.store import Store
from methods import create_model, method_cues, method_names, method_variants, register_method, trained_variant
from tests.helpers import cache_env, reidbench, write_spec

ABLATION = ["dsa-reid:full", "dsa-reid:global-joint", "dsa-reid:two-streams-fused", "dsa-reid:csa"]


def spec_of(tmp_path, grid_methods, name=None):
    return load_spec(write_spec(tmp_path, name, grid={"methods": grid_methods}, train={"iterations": 4}))


def by_variant(cells):
    return {c.variant: c for c in cells}


@pytest.mark.parametrize(
    "method,view",
    [(m, v) for m in method_names() for v in method_variants(m) if trained_variant(m, v) is not None],
)
def test_a_view_has_its_trained_variants_parameters_and_training_cues(method, view):
    """The contract: a view loads its trained variant's weights key for key, shape for shape, and
    trains with the same cues (else training once for both would change what the view measures)."""
    trained = trained_variant(method, view)
    torch.manual_seed(0)
    a = create_model(method, variant=trained, backbone="resnet18", num_classes=7, pretrained=False)
    b = create_model(method, variant=view, backbone="resnet18", num_classes=7, pretrained=False)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert method_cues(method, view).train == method_cues(method, trained).train
    b.load_state_dict(a.state_dict())  # and the weights carry over as they are


def test_dsa_reids_inference_only_rows_are_views_of_full():
    assert {v: trained_variant("dsa-reid", v) for v in ("global-joint", "local-joint", "two-streams-fused")} == {
        "global-joint": "full",
        "local-joint": "full",
        "two-streams-fused": "full",
    }
    assert trained_variant("dsa-reid", "global-single") is None  # trained without the other branch: its own model


def test_a_view_of_a_view_or_with_other_training_cues_is_refused_at_registration():
    with pytest.raises(ValueError, match="not a view"):
        register_method("t-views-a", variants=["a", "b", "c"], views={"b": "a", "c": "b"})
    with pytest.raises(ValueError, match="other cues"):
        register_method(
            "t-views-b",
            variants={"a": methods.Cues(train=("densepose",)), "b": methods.Cues()},
            views={"b": "a"},
        )


def test_a_view_rides_with_its_training_cell_in_one_run(tmp_path):
    """Listed with `full`, the views are carried by its run: one cell to start, its views attached,
    and every cell id is what it was."""
    spec = spec_of(tmp_path, ABLATION)
    cells = by_variant(spec.cells)
    assert cells["global-joint"].trainer().id == cells["full"].id
    due, busy = todo(spec, Store(tmp_path / "store"), executor="local")
    started = by_variant(due)
    assert sorted(started) == ["csa", "full"] and not busy
    assert [v.variant for v in started["full"].views] == ["global-joint", "two-streams-fused"]
    assert started["full"].id == cells["full"].id and not started["csa"].views
    assert sorted(c.id for c in with_views(due)) == sorted(c.id for c in spec.cells)
    assert started["full"].bare().as_dict() == cells["full"].as_dict()  # rows record the cell without its views


def test_a_view_alone_evaluates_its_training_cells_kept_model_or_trains(tmp_path):
    spec = spec_of(tmp_path, ["dsa-reid:global-joint"])
    (view,) = spec.cells
    store = Store(tmp_path / "store")
    due, _ = todo(spec, store, executor="local")
    assert due == [view] and model_source(store, view) is None  # no model anywhere: it trains
    trainer = view.trainer()
    store.model_path(trainer.id).parent.mkdir(parents=True)
    store.model_path(trainer.id).write_bytes(b"weights")
    store.model_info_path(trainer.id).write_text("{}")
    assert model_source(store, view) == trainer and evaluates_only(store, view)
    (status,) = cell_statuses(spec.cells, store)
    assert status.state == "to evaluate" and trainer.id in status.detail


def test_a_view_waits_while_another_run_holds_its_training_cell(tmp_path):
    spec = spec_of(tmp_path, ["dsa-reid:full", "dsa-reid:local-joint"])
    store = Store(tmp_path / "store")
    cells = by_variant(spec.cells)
    held = lease.Lease(store.cell_dir(cells["full"].id), "other-run", "other-run", executor="local")
    assert held.try_acquire() is None
    try:
        due, busy = todo(spec, store, executor="local")
        shown = {s.cell.variant: s for s in cell_statuses(spec.cells, store)}  # `reidbench status`, and slurm's todo
    finally:
        held.release()
    assert shown["local-joint"].state == "running" and cells["full"].id in shown["local-joint"].detail
    assert due == []
    assert {s.cell.variant: s.state for s in busy} == {"full": "running", "local-joint": "running"}
    assert "a view of cell" in next(s.detail for s in busy if s.cell.variant == "local-joint")


def test_a_done_view_is_evaluated_again_when_its_training_cell_trains_again(tmp_path, monkeypatch):
    """A view's rows must come from the model its training cell has now: when that cell trains again
    (here its rows and model were lost), the views listed with it ride along even though they are done."""
    spec = spec_of(tmp_path, ABLATION)
    cells = by_variant(spec.cells)
    store = Store(tmp_path / "store")
    done = {c.id for c in spec.cells}
    monkeypatch.setattr("harness.runner.is_done", lambda store, cell: cell.id in done)
    assert todo(spec, store, executor="local") == ([], [])
    done.discard(cells["full"].id)
    due, busy = todo(spec, store, executor="local")
    assert [c.variant for c in due] == ["full"] and not busy
    assert sorted(v.variant for v in due[0].views) == ["global-joint", "two-streams-fused"]
    # With its model kept, full only evaluates it (a new test set, say): the views' model is unchanged.
    store.model_path(cells["full"].id).parent.mkdir(parents=True)
    store.model_path(cells["full"].id).write_bytes(b"weights")
    store.model_info_path(cells["full"].id).write_text("{}")
    due, _ = todo(spec, store, executor="local")
    assert [c.variant for c in due] == ["full"] and not due[0].views


def test_a_view_that_failed_in_its_training_cells_run_shows_that_runs_logs(tmp_path):
    spec = spec_of(tmp_path, ["dsa-reid:full", "dsa-reid:local-joint"])
    cells = by_variant(spec.cells)
    store = Store(tmp_path / "store")
    logs = store.cell_dir(cells["full"].id) / "logs" / "attempt-1"
    logs.mkdir(parents=True)
    (logs / "rank0.log").write_text("a view failed here\n")
    store.write_state(cells["full"].id, "done")
    store.write_state(cells["local-joint"].id, "failed", reason="boom", logs_of=cells["full"].id)
    assert log_files(store, cells["local-joint"].id) == [logs / "rank0.log"]
    store.write_state(cells["local-joint"].id, "failed", reason="boom")  # failed in a run of its own
    assert log_files(store, cells["local-joint"].id) == []


def test_carry_views_leaves_cells_without_views_as_they_are(tmp_path):
    spec = spec_of(tmp_path, ["baseline:bnneck", "dsa-reid:csa"])
    assert carry_views(list(spec.cells), []) == (list(spec.cells), [])


@pytest.mark.slow
def test_full_and_its_views_train_once_and_a_view_alone_measures_the_same_from_the_kept_model(tmp_path):
    """`reidbench run` on full + two views + csa trains two models (full, csa), not four: each view's
    rows come from full's run, name it (trained_by) and carry its iterations. Run alone later, a view
    evaluates full's kept model without training and measures exactly what the first run measured."""
    spec = write_spec(
        tmp_path,
        "views",
        grid={"methods": ABLATION, "test_datasets": ["market1501"]},
        train={"iterations": 6, "lr": 1e-3, "warmup": 2, "milestones": [4]},
    )
    run = reidbench("run", spec, "--store", "store", cwd=tmp_path, env=cache_env(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("] training dsa-reid:") == 2, run.stdout
    assert "] training dsa-reid:full " in run.stdout and "] training dsa-reid:csa " in run.stdout
    store = Store(tmp_path / "store")
    cells = by_variant(load_spec(spec).cells)
    rows = store.read().rows
    mine = {v: sorted((r for r in rows if r["cell_id"] == c.id), key=lambda r: r["rerank"]) for v, c in cells.items()}
    assert all(len(found) == 2 for found in mine.values()), {v: len(f) for v, f in mine.items()}
    import json

    for view in ("global-joint", "two-streams-fused"):
        assert all(json.loads(r["config"])["trained_by"] == cells["full"].id for r in mine[view])
        assert all(r["iterations"] == 6 and r["variant"] == view for r in mine[view])
        assert not store.has_model(cells[view].id)  # one kept model: full's
        assert (store.read_state(cells[view].id) or {}).get("trained_by") == cells["full"].id
        assert log_files(store, cells[view].id) == log_files(store, cells["full"].id) != []  # full's run's logs
    assert "trained_by" not in json.loads(mine["full"][0]["config"])
    # Inference on [zG, zL] (two-streams-fused) is another embedding than full's [fG, fL].
    assert mine["two-streams-fused"][0]["mAP"] != mine["full"][0]["mAP"]

    alone = write_spec(
        tmp_path,
        "views-alone",
        grid={"methods": ["dsa-reid:two-streams-fused"], "test_datasets": ["market1501"]},
        train={"iterations": 6, "lr": 1e-3, "warmup": 2, "milestones": [4]},
    )
    again = reidbench("run", alone, "--store", "store", "--force", cwd=tmp_path, env=cache_env(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "] training dsa-reid:" not in again.stdout and "of its training cell" in again.stdout, again.stdout
    rerun = sorted(
        (r for r in store.read().rows if r["cell_id"] == cells["two-streams-fused"].id), key=lambda r: r["rerank"]
    )
    assert rerun[0]["run_id"] != mine["two-streams-fused"][0]["run_id"]
    own = log_files(store, cells["two-streams-fused"].id)  # its own run now: its own logs
    assert own and not set(own) & set(log_files(store, cells["full"].id))
    for first, second in zip(mine["two-streams-fused"], rerun):
        assert second["mAP"] == pytest.approx(first["mAP"], abs=1e-6)
        assert second["rank1"] == pytest.approx(first["rank1"], abs=1e-6)


def test_a_view_that_its_training_cells_run_did_not_evaluate_is_a_failed_outcome(tmp_path):
    """run_grid adds an outcome per carried view: done, or why not (its own recorded failure, or its
    training cell's run that never reached it), so `reidbench run` exits non-zero for it."""
    from harness.runner import view_outcome

    spec = spec_of(tmp_path, ["dsa-reid:full", "dsa-reid:global-joint"])
    view = by_variant(spec.cells)["global-joint"]
    store = Store(tmp_path / "store")
    never = view_outcome(store, view)
    assert not never.ok and view.trainer().id in never.reason
    store.write_state(view.id, "failed", reason="3 broken test file(s)", attempt="a1")
    failed = view_outcome(store, view)
    assert not failed.ok and failed.reason == "3 broken test file(s)"
