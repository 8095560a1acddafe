"""A fine-tuning phase's own identity classifier (`classifier = "new"`) and lr (`classifier_lr`).

SPReID's authors fine-tune with a classifier of the target's identities at lr 0.01 and the rest of
the model at 0.001 (methods/spreid.py). The unit tests build SPReID's baseline model on resnet18;
the slow one trains it through run_cell, kills it at the phase boundary and resumes it.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.engine import heads as phase_heads
from harness.engine import schedule
from harness.engine.cell import run_cell
from harness.engine.train import build_optimizer, build_scheduler
from harness.errors import UserError
from harness.spec import Phase, Resources, TrainConfig, load_spec
from methods import create_model
from tests.test_phases import Crash, MemorySink, resume_spec

UNION, TARGET = list(range(16)), list(range(16, 24))  # a target outside the union gets labels after it


def two_phases(**finetune) -> TrainConfig:
    return TrainConfig(
        optimizer="sgd",
        lr=0.01,
        warmup=0,
        milestones=(),
        phases=(
            Phase(iterations=4, input_size=(32, 16), lr=0.01),
            Phase(iterations=4, input_size=(32, 16), lr=0.001, on="finetune", **finetune),
        ),
    )


def heads_for(model, config: TrainConfig):
    plans = schedule.plan(config, 1)
    return plans, phase_heads.PhaseHeads(model, plans, lambda on: UNION if on == "train" else TARGET, seed=0)


def spreid_baseline(num_classes: int = 24):
    return create_model("spreid", variant="model-l", backbone="resnet18", num_classes=num_classes, pretrained=False)


def test_a_new_classifier_has_the_targets_identities_and_the_state_dict_is_the_same_in_every_phase():
    model = spreid_baseline()
    config = two_phases(classifier="new", classifier_lr=0.01)
    plans, heads = heads_for(model, config)
    keys = set(model.state_dict())
    assert "classifier.weight" not in keys  # the current classifier is an alias, saved once
    assert model.state_dict()["phase_classifiers.0.weight"].shape == (24, 512)
    assert model.state_dict()["phase_classifiers.1.weight"].shape == (8, 512)

    assert heads.enter(plans[0]) is None and model.classifier is heads.heads[0]
    lookup = heads.enter(plans[1])
    assert model.classifier is heads.heads[1] and set(model.state_dict()) == keys
    assert lookup[TARGET].tolist() == list(range(8))  # union labels 16..23 -> the new classifier's 0..7

    model.train()
    outputs = model(torch.randn(2, 3, 32, 16))
    assert outputs["logits"].shape == (2, 8)
    losses = phase_heads.relabelled(model.losses, lookup, torch.device("cpu"))
    assert losses(outputs, torch.tensor([16, 23]))["id"].isfinite()

    assert heads.finish() == 8
    assert "classifier.weight" in model.state_dict() and not any("phase_" in k for k in model.state_dict())
    spreid_baseline(num_classes=8).load_state_dict(model.state_dict())  # the kept model is the method's own


def test_each_phase_gives_the_classifier_and_the_rest_of_the_model_their_own_lr():
    model = spreid_baseline()
    config = two_phases(classifier="new", classifier_lr=0.01)
    plans, heads = heads_for(model, config)
    optimizer = build_optimizer(model, config, heads.param_groups())
    scheduler = build_scheduler(optimizer, config, 1)
    body, head = optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in heads.heads.parameters()}
    assert len(body["params"]) + len(head["params"]) == len(list(model.parameters()))
    for _ in range(4):  # the first phase: 0.01 for both
        assert (body["lr"], head["lr"]) == pytest.approx((0.01, 0.01))
        optimizer.step()
        scheduler.step()
    assert (body["lr"], head["lr"]) == pytest.approx((0.001, 0.01))  # fine-tuning: 0.001, the classifier 0.01


def test_a_method_without_a_replaceable_classifier_is_refused_with_what_to_do():
    model = create_model("baseline", variant="bnneck", backbone="resnet18", num_classes=24, pretrained=False)
    with pytest.raises(ValueError, match=r"classifier = \"new\"|need a model with one identity classifier"):
        heads_for(model, two_phases(classifier="new"))


def test_the_spec_checks_the_phase_keys_and_only_a_set_key_changes_the_cell_id(make_spec):
    def cell(*extra):
        return load_spec(resume_spec(make_spec, method="spreid:model-l", finetune=dict(extra))).cells[0]

    plain, kept = cell(), cell(("classifier", "keep"))
    assert plain.id == kept.id  # the default spelled out: the same experiment, the same id
    new = cell(("classifier", "new"), ("classifier_lr", 0.01))
    assert new.id != plain.id and new.train.phases[1].classifier == "new"
    with pytest.raises(UserError, match=r"phase 2 \(\[\[train.phases\]\]\): unknown classifier = 'fresh'"):
        cell(("classifier", "fresh"))
    with pytest.raises(UserError, match="classifier_lr must be positive"):
        cell(("classifier_lr", 0.0))


def test_reidbench_run_refuses_a_new_classifier_for_a_method_without_one(tmp_path, make_spec, capsys, monkeypatch):
    """The parser refuses it (exit 2, the file, line and what to do) before any cell starts: the
    registry says which methods can replace their classifier, without building a model."""
    monkeypatch.chdir(tmp_path)  # a run that got through would write its report into ./reports
    spec = resume_spec(make_spec, method="baseline", finetune={"classifier": "new"})
    assert main(["run", str(spec), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    line = spec.read_text().splitlines().index('classifier = "new"') + 1
    assert err.startswith(f'reidbench: error: {spec}, line {line}: phase 2 ([[train.phases]]): classifier = "new"')
    assert "(spreid); baseline has none. Remove classifier from the phase" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "store").exists()


@pytest.fixture()
def cache(tmp_path):
    old = os.environ.get("REIDBENCH_CACHE")
    os.environ["REIDBENCH_CACHE"] = str(tmp_path / "cache")
    yield
    if old is None:
        del os.environ["REIDBENCH_CACHE"]
    else:
        os.environ["REIDBENCH_CACHE"] = old


@pytest.mark.slow
def test_a_new_classifier_trains_resumes_at_the_boundary_and_is_the_kept_models(cache, tmp_path, make_spec, capsys):
    spec = resume_spec(make_spec, method="spreid:model-l", finetune={"classifier": "new", "classifier_lr": 0.01})
    (cell,) = load_spec(spec).cells
    resources = Resources(world_size=1, device="cpu")
    crashed = MemorySink(crash_at=2)
    with pytest.raises(Crash):
        run_cell(cell, resources, str(tmp_path / "a"), "local", "1", sink=crashed)
    resumed = MemorySink(state=crashed.state)
    run_cell(cell, resources, str(tmp_path / "a"), "local", "2", sink=resumed)
    straight = MemorySink()
    run_cell(cell, resources, str(tmp_path / "b"), "local", "1", sink=straight)
    assert "resumed from the checkpoint at step 2 (phase 2 of 2)" in capsys.readouterr().out
    final = straight.saved[4]["model"]
    targets = 8  # the synthetic Market-1501 of 16 identities trains on 8
    assert final["phase_classifiers.1.weight"].shape[0] == targets
    assert not torch.equal(final["phase_classifiers.1.weight"], crashed.saved[2]["model"]["phase_classifiers.1.weight"])
    for name, value in final.items():  # the resumed run trained the same steps, the new classifier included
        assert torch.equal(value, resumed.saved[4]["model"][name]), name
    assert straight.saved[4]["optimizer"]["param_groups"][1]["lr"] == pytest.approx(0.01)

    kept = tmp_path / "b" / "cells" / cell.id
    info = json.loads((kept / "model.json").read_text())
    weights = load_file(kept / "model.safetensors")
    assert info["num_classes"] == targets and weights["classifier.weight"].shape == (targets, 512)
    assert not any(k.startswith("phase_") for k in weights)
