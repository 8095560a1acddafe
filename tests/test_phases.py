"""Union training sets, fine-tuning targets and phases, on real (synthetic) datasets and real runs.

The unit tests read synthetic Market-1501, DukeMTMC-reID and MSMT17 copies; the slow ones train
resnet18 for a few steps per phase: in-process through run_cell (the resume test) and through the
`reidbench` command (end to end).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness import data
from harness.data.sampler import PKBatchSampler
from harness.data.synthetic import synthetic_root
from harness.data.union import load_training
from harness.engine import schedule
from harness.engine.cell import _batches, run_cell
from harness.engine.dist import DistEnv
from harness.errors import UserError
from harness.spec import Phase, Resources, SyntheticConfig, TrainConfig, load_spec
from harness.store import Store
from tests.helpers import reidbench

SYNTHETIC = SyntheticConfig(ids=16, seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One synthetic cache for the module (REIDBENCH_CACHE is read at each call)."""
    old = os.environ.get("REIDBENCH_CACHE")
    os.environ["REIDBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["REIDBENCH_CACHE"])
    if old is None:
        del os.environ["REIDBENCH_CACHE"]
    else:
        os.environ["REIDBENCH_CACHE"] = old


def root_of(name: str) -> Path:
    return synthetic_root(name, ids=SYNTHETIC.ids, seed=SYNTHETIC.seed)


def test_a_union_relabels_identities_per_dataset_in_member_order(cache):
    training = load_training("market1501+dukemtmc", "market1501", root_of)
    market, duke = (
        data.load_dataset("market1501", root_of("market1501")),
        data.load_dataset("dukemtmc", root_of("dukemtmc")),
    )
    n_market, n_duke = market.num_train_ids, duke.num_train_ids
    union = training.sets["train"]
    assert training.num_classes == n_market + n_duke and len(union) == len(market.train) + len(duke.train)
    assert sorted({s.pid for s in union}) == list(range(n_market + n_duke))
    for member, offset, rows in (
        ("market1501", 0, union[: len(market.train)]),
        ("dukemtmc", n_market, union[len(market.train) :]),
    ):
        original = {p: i for i, p in enumerate(sorted({s.pid for s in training.loaded[member].train}))}
        assert all(s.root == str(root_of(member)) and Path(s.path).is_relative_to(root_of(member)) for s in rows)
        assert [s.pid for s in rows] == [offset + original[s.pid] for s in training.loaded[member].train]
    # the target is a member: its samples keep their labels in the union, a subset of the space
    assert training.sets["finetune"] == union[: len(market.train)]
    assert training.loaded["market1501"] == market  # as read: test sets reuse it


def test_a_target_outside_the_union_gets_labels_after_it(cache):
    training = load_training("market1501+dukemtmc", "msmt17", root_of)
    size = sum(training.loaded[m].num_train_ids for m in ("market1501", "dukemtmc"))
    target = training.sets["finetune"]
    assert sorted({s.pid for s in target}) == list(range(size, training.num_classes))
    assert training.num_classes == size + training.loaded["msmt17"].num_train_ids
    assert all(s.root == str(root_of("msmt17")) for s in target)
    plain = load_training("market1501", None, root_of)  # one dataset: the labels it always had
    assert set(plain.sets) == {"train"} and plain.num_classes == plain.loaded["market1501"].num_train_ids


def test_a_test_only_dataset_cannot_be_trained_on(cache):
    with pytest.raises(UserError, match="occluded-reid .* has no training images"):
        load_training("market1501+occluded-reid", None, root_of)


def test_each_phase_loads_its_dataset_at_its_size_with_cues_from_each_members_root(cache):
    """Pose heatmaps follow the phase's input size; a duke sample's cue maps come from duke's root."""
    training = load_training("market1501+dukemtmc", "market1501", root_of)
    config = TrainConfig(
        ids_per_batch=4,
        images_per_id=2,
        num_workers=0,
        phases=(Phase(iterations=1, input_size=(32, 16)), Phase(iterations=1, input_size=(64, 32), on="finetune")),
    )
    model = SimpleNamespace(train_cues=("pose", "parsing"))
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    cell = SimpleNamespace(seed=0, model_kwargs=lambda: {"last_stride": 1}, cue_sources=lambda: {})
    n_market = training.loaded["market1501"].num_train_ids
    for plan in schedule.plan(config, 1):
        samples, seen = training.sets[plan.on], set()
        sampler = PKBatchSampler([s.pid for s in samples], ids_per_batch=4, images_per_id=2, steps=3, seed=0)
        for images, pids, _, cues in _batches(cell, config, plan, samples, sampler, model, env):
            h, w = plan.input_size
            assert images.shape == (8, 3, h, w) and cues["parsing"].shape == (8, 5, h, w)
            assert cues["pose"].shape == (8, 13, h // 16, w // 16)
            seen.update("market1501" if p < n_market else "dukemtmc" for p in pids.tolist())
        # 12 of the union's 16 ids: both members' images and cue maps loaded; the target: its own
        assert seen == ({"market1501", "dukemtmc"} if plan.on == "train" else {"market1501"})


def resume_spec(make_spec, *, method: str = "baseline", finetune: dict | None = None, file: str | None = None, **train):
    """A union of two synthetic sets, then its fine-tuning target: two 2-step phases at two input
    sizes, checkpointing after every step. `finetune`: more keys of the second phase (e.g.
    classifier = "new", tests/test_phase_heads.py); `train`: more [train] keys."""
    phases = [
        {"iterations": 2, "input_size": [32, 16]},
        {"iterations": 2, "input_size": [48, 24], "lr": 0.001, "on": "finetune", **(finetune or {})},
    ]
    return make_spec(
        "resume",
        file=file,
        grid={"methods": [method], "train_datasets": ["market1501+dukemtmc"], "finetune_datasets": ["market1501"]},
        train={
            "iterations": None,
            "optimizer": "sgd",
            "lr": 0.01,
            "warmup": 0,
            "milestones": [],
            "eval_batch_size": 64,
            "checkpoint_every": 1,
            "check_every": 1,
            "phases": phases,
            **train,
        },
    )


class Crash(Exception):
    pass


class MemorySink:
    """Checkpoints kept in memory; optionally the process 'dies' right after saving at `crash_at`."""

    def __init__(self, crash_at: int | None = None, state: dict | None = None):
        self.crash_at, self.state, self.saved = crash_at, state, {}

    def candidates(self):
        return ["memory"] if self.state is not None else []

    def load(self, name):
        return self.state

    def discard(self, name, reason):
        self.state = None

    def save(self, state, step):
        self.state = copy.deepcopy(state)
        self.saved[step] = self.state
        if step == self.crash_at:
            raise Crash(f"killed after the checkpoint at step {step}")

    def clear(self):
        pass


@pytest.mark.slow
def test_a_run_resumed_at_the_phase_boundary_continues_in_phase_two(cache, tmp_path, make_spec, capsys):
    spec = load_spec(resume_spec(make_spec))
    (cell,) = spec.cells
    resources = Resources(world_size=1, device="cpu")

    crashed = MemorySink(crash_at=2)  # the first checkpoint of phase 2: its first step is next
    with pytest.raises(Crash):
        run_cell(cell, resources, str(tmp_path / "a"), "local", "1", sink=crashed)
    assert crashed.state["step"] == 2 and crashed.state["phase"] == 1
    capsys.readouterr()

    resumed = MemorySink(state=crashed.state)
    run_cell(cell, resources, str(tmp_path / "a"), "local", "2", sink=resumed)
    log = capsys.readouterr().out
    assert "resumed from the checkpoint at step 2 (phase 2 of 2)" in log
    assert "phase 1 of 2" not in log and "phase 2 of 2: steps 3-4 on market1501 (8 ids" in log and "at 48x24" in log
    assert sorted(resumed.saved) == [3, 4] and resumed.saved[3]["phase"] == 1  # 4: the final weights, before evaluation

    straight = MemorySink()
    run_cell(cell, resources, str(tmp_path / "b"), "local", "1", sink=straight)
    assert sorted(straight.saved) == [1, 2, 3, 4] and [straight.saved[s]["phase"] for s in (1, 2, 3)] == [0, 1, 1]
    for name, value in straight.saved[3]["model"].items():  # the resumed run trained exactly the same steps
        assert torch.equal(value, resumed.saved[3]["model"][name]), name

    store = Store(tmp_path / "a")
    rows = [r for r in store.read().rows if r["cell_id"] == cell.id]
    assert sorted((r["test_dataset"], r["rerank"]) for r in rows) == [("market1501", False), ("market1501", True)]
    assert all(r["iterations"] == 4 for r in rows)
    state = store.read_state(cell.id)
    assert state["state"] == "done" and [p["input_size"] for p in state["phases"]] == [[32, 16], [48, 24]]


@pytest.mark.slow
def test_union_then_finetune_phase_end_to_end(cache, tmp_path, make_spec):
    phases = [
        {"iterations": 10, "input_size": [32, 16]},  # the union at a low resolution ...
        {
            "iterations": 10,
            "lr": 0.001,
            "on": "finetune",
        },  # ... then the target at [train] input_size, lr 10 times lower
    ]
    spec = make_spec(
        "recipes",
        grid={"train_datasets": ["market1501+dukemtmc"], "finetune_datasets": ["market1501"]},
        train={
            "iterations": None,
            "optimizer": "sgd",
            "nesterov": True,
            "momentum": 0.9,
            "lr": 0.01,
            "weight_decay": 5e-4,
            "grad_clip": 2.0,
            "schedule": "exponential",
            "gamma": 0.9,
            "exp_decays": 10,
            "warmup": 0,
            "eval_batch_size": 64,
            "phases": phases,
        },
        resources={"world_size": 2},
    )  # real DDP (gloo): clipping after the all-reduce, phases on every rank
    run = reidbench("run", spec, "--store", "store", cwd=tmp_path, env={**os.environ, "REIDBENCH_CACHE": str(cache)})
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    (cell,) = load_spec(spec).cells
    log = run.stdout + run.stderr
    assert "training baseline:bnneck on resnet18 for 20 steps, 16 ids" in log  # 8 + 8 identities, one label space
    assert "phase 1 of 2: steps 1-10 on market1501+dukemtmc (16 ids" in log and "at 32x16, lr 0.01" in log
    assert "phase 2 of 2: steps 11-20 on market1501 (8 ids" in log and "at 64x32, lr 0.001" in log
    assert "step 5:" in log and "step 20:" in log
    assert "lr=5.90e-03" in log and "lr=5.90e-04" in log  # 0.9^5 into each phase, at its own lr
    store = Store(tmp_path / "store")
    rows = [r for r in store.read().rows if r["cell_id"] == cell.id]
    assert sorted((r["test_dataset"], r["rerank"]) for r in rows) == [("market1501", False), ("market1501", True)]
    assert all(r["train_dataset"] == "market1501+dukemtmc" and r["iterations"] == 20 for r in rows)
    state = store.read_state(cell.id)
    assert state["state"] == "done" and state["iterations"] == 20
    assert [(p["on"], p["steps"], p["input_size"], p["lr"]) for p in state["phases"]] == [
        ("train", 10, [32, 16], 0.01),
        ("finetune", 10, [64, 32], 0.001),
    ]
    config = json.loads(rows[0]["config"])["cell"]
    assert config["finetune_dataset"] == "market1501" and config["train"]["grad_clip"] == 2.0


def test_the_batch_must_fit_the_smallest_training_set_before_anything_runs(cache, make_spec, capsys):
    from harness.runner import preflight

    (cell,) = load_spec(resume_spec(make_spec, file="big", ids_per_batch=12)).cells
    with pytest.raises(UserError, match="ids_per_batch = 12 must be at most the 8 training identities of market1501"):
        preflight([cell], 1)  # the union has 16 identities, its fine-tuning target 8
    preflight(list(load_spec(resume_spec(make_spec, file="big", ids_per_batch=8)).cells), 1)
    assert "dataset dukemtmc (synthetic)" in capsys.readouterr().out
