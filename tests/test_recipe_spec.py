"""Spec keys of training recipes: schedules, phases, unions, fine-tuning targets, method options."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest

import methods
from harness.errors import UserError
from harness.spec import Cell, Phase, load_spec

BASE = """
[grid]
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]

[train]
lr = 0.01
"""

PHASED = """
[grid]
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501+dukemtmc+cuhk03-labeled"]
finetune_datasets = ["market1501", "msmt17"]

[train]
input_size = [256, 128]
optimizer = "sgd"
nesterov = true
lr = 0.01
schedule = "exponential"
gamma = 0.9
grad_clip = 2.0

[[train.phases]]
iterations = 200
input_size = [492, 164]

[[train.phases]]
epochs = 5
lr = 0.001
on = "finetune"
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "spec.toml"
    path.write_text(textwrap.dedent(text))
    return load_spec(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_ids_of_cells_without_the_new_keys_are_unchanged(tmp_path):
    # Computed at ID_VERSION 2 (issue 18); the [train] keys added after ID_VERSION 1 stay out of the
    # id at their defaults. Epochs of identities (what epochs meant before epoch_unit): spelt out,
    # epoch_unit keeps the ids; the new default (images) is another recipe.
    text = """
    [grid]
    name = "t"
    methods = ["baseline"]
    backbones = ["resnet50", "resnet18"]
    train_datasets = ["market1501", "dukemtmc"]
    test_datasets = ["market1501", "cuhk03-labeled"]
    seeds = [0, 3]

    [train]
    epochs = 30
    epoch_unit = "identities"
    optimizer = "sgd"
    lr = 0.01
    milestones = [10, 20]

    [datasets.dukemtmc]
    root = "/data/reid"
    """
    assert [c.id for c in load(tmp_path, text).cells] == [
        "50821ea78349",
        "899befc72ef4",
        "0f869d829f51",
        "4d3dd6cd37f2",
        "ec4b553c652f",
        "a8d95fb42bb7",
        "e628426be048",
        "85c552e15ede",
    ]
    defaults = (
        text.replace(
            "lr = 0.01\n",
            'lr = 0.01\nschedule = "step"\nnesterov = false\ngrad_clip = 0.0\nexp_decays = 10\n'
            'phases = []\nsync_bn = true\nrerank_distance = "euclidean"\n',
        )
        + "[method_options.baseline]\n"
    )
    assert [c.id for c in load(tmp_path, defaults).cells][0] == "50821ea78349"
    images = text.replace('epoch_unit = "identities"\n', "")
    assert not {c.id for c in load(tmp_path, images).cells} & {c.id for c in load(tmp_path, text).cells}
    assert (
        load(tmp_path, images).cells[0].id
        == load(tmp_path, images.replace("epochs = 30", 'epochs = 30\nepoch_unit = "images"')).cells[0].id
    )
    local_bn = text.replace("epochs = 30", "epochs = 30\nsync_bn = false")
    assert load(tmp_path, local_bn).cells[0].id != "50821ea78349"
    pk = text.replace("epochs = 30", 'epochs = 30\nsampler = "pk"')  # the default keeps the id
    assert load(tmp_path, pk).cells[0].id == "50821ea78349"
    uniform = images.replace("epochs = 30", 'epochs = 30\nsampler = "uniform"')
    assert load(tmp_path, uniform).cells[0].id != load(tmp_path, images).cells[0].id
    assert load(tmp_path, uniform).cells[0].identity()["train"]["sampler"] == "uniform"


def test_a_uniform_sampler_counts_epochs_of_images(tmp_path):
    """Uniform batches pass over the images: epochs of identities would be a recipe nobody ran."""
    text = """
    [grid]
    methods = ["ssp-reid:backbone"]
    backbones = ["resnet18"]
    train_datasets = ["market1501"]
    [train]
    epochs = 3
    sampler = "uniform"
    """
    (cell,) = load(tmp_path, text).cells
    assert cell.train.sampler == "uniform" and cell.train.epoch_unit == "images"
    message = error_of(tmp_path, text + 'epoch_unit = "identities"\n')
    assert message.startswith(f'{tmp_path / "spec.toml"}, line 9: sampler = "uniform" draws images')
    assert 'set epoch_unit = "images"' in message


def test_epoch_unit_does_not_touch_recipes_counted_in_iterations(tmp_path):
    text = """
    [grid]
    methods = ["baseline"]
    backbones = ["resnet18"]
    train_datasets = ["market1501"]
    [train]
    iterations = 200
    """
    (cell,) = load(tmp_path, text).cells
    assert "epoch_unit" not in cell.identity()["train"] and cell.train.epoch_unit == "images"
    message = error_of(tmp_path, text + 'epoch_unit = "identities"\n')
    assert "line 8" in message and "epoch_unit applies to recipes counted in epochs" in message


@pytest.mark.parametrize(
    "line,message",
    [
        ('epoch_unit = "image"', "unknown epoch_unit 'image'; did you mean 'images'? Valid names: identities, images."),
        ('sync_bn = "off"', "sync_bn must be true or false"),
        ('sampler = "uniformly"', "unknown sampler 'uniformly'; did you mean 'uniform'? Valid names: pk, uniform."),
        (
            'rerank_distance = "squred"',
            "unknown rerank_distance 'squred'; did you mean 'squared'? Valid names: euclidean, squared.",
        ),
    ],
)
def test_wrong_epoch_unit_sync_bn_or_rerank_distance_names_key_line_and_values(tmp_path, line, message):
    text = (
        '[grid]\nmethods = ["baseline"]\nbackbones = ["resnet18"]\ntrain_datasets = ["market1501"]\n[train]\nepochs = 3\n'
        + line
        + "\n"
    )
    assert error_of(tmp_path, text) == f"{tmp_path / 'spec.toml'}, line 7: {message}"


def test_phases_union_and_finetuning_parse_and_resolve(tmp_path):
    spec = load(tmp_path, PHASED)
    assert [c.finetune_dataset for c in spec.cells] == ["market1501", "msmt17"]
    cell = spec.cells[0]
    t = cell.train
    assert (t.schedule, t.gamma, t.nesterov, t.grad_clip, t.iterations, t.epochs) == (
        "exponential",
        0.9,
        True,
        2.0,
        None,
        None,
    )
    assert t.phases == (
        Phase(iterations=200, input_size=(492, 164), lr=0.01, on="train"),
        Phase(epochs=5, input_size=(256, 128), lr=0.001, on="finetune"),
    )
    assert cell.train_dataset == "market1501+dukemtmc+cuhk03-labeled"
    assert cell.test_datasets == ("market1501",)  # a fine-tuned cell is tested on its target
    assert spec.cells[1].test_datasets == ("msmt17",)
    assert {d.name for d in spec.cells[1].datasets} == {"market1501", "dukemtmc", "cuhk03-labeled", "msmt17"}
    assert all(d.synthetic for d in cell.datasets)
    again = Cell.from_json(cell.to_json())
    assert again == cell and again.id == cell.id and hash(again) == hash(cell)


def test_a_union_is_tested_on_its_members_by_default(tmp_path):
    (cell,) = load(tmp_path, BASE.replace('["market1501"]', '["market1501+dukemtmc"]')).cells
    assert cell.test_datasets == ("market1501", "dukemtmc") and cell.finetune_dataset is None
    listed = BASE.replace('["market1501"]', '["market1501+dukemtmc"]\ntest_datasets = ["cuhk03-labeled"]')
    (cell,) = load(tmp_path, listed).cells
    assert cell.test_datasets == ("cuhk03-labeled",)


@pytest.mark.parametrize(
    "change",
    [
        ("lr = 0.001\non", "lr = 0.002\non"),  # a phase's lr
        ("epochs = 5", "epochs = 6"),
        ("[492, 164]", "[480, 160]"),
        ('"market1501+dukemtmc+cuhk03-labeled"', '"dukemtmc+market1501+cuhk03-labeled"'),  # the label order
        ('finetune_datasets = ["market1501", "msmt17"]', 'finetune_datasets = ["dukemtmc", "msmt17"]'),
        ("grad_clip = 2.0", "grad_clip = 1.0"),
        ("nesterov = true", "nesterov = false"),
        ('schedule = "exponential"', 'schedule = "cosine"'),
    ],
)
def test_recipe_keys_are_part_of_the_cell_id(tmp_path, change):
    assert load(tmp_path, PHASED).cells[0].id != load(tmp_path, PHASED.replace(*change)).cells[0].id


def test_a_phase_spelling_out_the_train_defaults_has_the_same_id(tmp_path):
    spelled = PHASED.replace("iterations = 200\n", 'iterations = 200\nlr = 0.01\non = "train"\n')
    spelled = spelled.replace("epochs = 5\n", "epochs = 5\ninput_size = [256, 128]\n")
    assert load(tmp_path, PHASED).cells[0].id == load(tmp_path, spelled).cells[0].id


@pytest.mark.parametrize(
    "change, expected, line",
    [
        (('schedule = "exponential"', 'schedule = "cosin"'), "unknown schedule 'cosin'; did you mean 'cosine'", 13),
        (("grad_clip = 2.0", "grad_clip = -1.0"), "grad_clip must not be negative", 15),
        (('optimizer = "sgd"', 'optimizer = "adam"'), 'nesterov needs optimizer = "sgd"', 11),
        (
            ("iterations = 200\n", "iterations = 200\nwarmup = 3\n"),
            "unknown key 'warmup' in phase 1 ([[train.phases]])",
            19,
        ),
        (
            ("epochs = 5\n", "epochs = 5\niterations = 4\n"),
            "phase 2 ([[train.phases]]): give its length as iterations or as epochs",
            23,
        ),
        (("epochs = 5\n", ""), "phase 2 ([[train.phases]]): give its length", 21),
        (("epochs = 5", "epochs = 0"), "phase 2 ([[train.phases]]): epochs must be at least 1", 22),
        (('on = "finetune"', 'on = "fine-tune"'), "unknown on = 'fine-tune'; did you mean 'finetune'", 24),
        (("[492, 164]", "[492]"), "phase 1 ([[train.phases]]): input_size must be [height, width]", 19),
        (("lr = 0.001\n", "lr = -1.0\n"), "phase 2 ([[train.phases]]): lr must be positive", 23),
        (("lr = 0.001\n", 'lr = "low"\n'), "phase 2: lr must be a number", 23),
        (("input_size = [256, 128]\n", "input_size = [256, 128]\niterations = 9\n"), "remove [train] iterations", 10),
        (
            ('finetune_datasets = ["market1501", "msmt17"]\n', ""),
            "phase 2 trains on the fine-tuning dataset, but [grid] has no finetune_datasets",
            23,
        ),
        (
            ('on = "finetune"', 'on = "train"'),
            'finetune_datasets needs a [[train.phases]] entry with on = "finetune"',
            6,
        ),
        (
            ('"market1501+dukemtmc+cuhk03-labeled"', '"market1501+duke"'),
            "unknown dataset 'duke' in 'market1501+duke'",
            5,
        ),
        (('"market1501+dukemtmc+cuhk03-labeled"', '"market1501+market1501"'), "names a dataset twice", 5),
        (('"market1501+dukemtmc+cuhk03-labeled"', '"market1501+"'), "has an empty member", 5),
        (('"market1501", "msmt17"]', '"market1501", "msmt"]'), "unknown dataset 'msmt'; did you mean 'msmt17'", 6),
    ],
)
def test_bad_recipe_keys_say_what_and_where(tmp_path, change, expected, line):
    message = error_of(tmp_path, PHASED.replace(*change))
    assert expected in message and f"line {line}:" in message, message


def test_milestones_belong_to_the_step_schedule(tmp_path):
    message = error_of(tmp_path, BASE + 'schedule = "cosine"\nmilestones = [10]\n')
    assert 'milestones apply to schedule = "step" only' in message and "line 10" in message


def test_an_empty_phase_list_is_one_phase_made_of_train(tmp_path):
    (plain,) = load(tmp_path, BASE + "iterations = 7\n").cells
    (empty,) = load(tmp_path, BASE + "iterations = 7\nphases = []\n").cells
    assert plain.id == empty.id and empty.train.phases == ()


def toy_builder(
    *,
    variant,
    backbone,
    num_classes,
    pretrained=True,
    last_stride=1,
    label_smoothing=0.1,
    triplet_margin=0.3,
    stripes: int = 8,
    fuse: bool = False,
    scale: float = 1.0,
    mode: str = "a",
):
    raise AssertionError("only its signature is used")


@pytest.fixture
def toy(monkeypatch):
    """A registered method with options, for this test only (the registry is restored afterwards)."""
    monkeypatch.setitem(methods._METHODS, "toy", methods.MethodInfo("toy", toy_builder, ("v",), {"v": methods.Cues()}))
    assert "stripes" in inspect.signature(methods.method_builder("toy")).parameters


TOY = BASE.replace('["baseline"]', '["toy", "baseline"]')


def test_method_options_reach_only_their_method_and_join_its_id(tmp_path, toy):
    plain = load(tmp_path, TOY).cells
    spec = load(tmp_path, TOY + "\n[method_options.toy]\nstripes = 4\nscale = 2\nfuse = true\n")
    toy_cell, baseline_cell = spec.cells
    assert toy_cell.method_options == (("fuse", True), ("scale", 2), ("stripes", 4))
    assert baseline_cell.method_options == () and baseline_cell.id == plain[1].id
    assert toy_cell.id != plain[0].id
    again = Cell.from_json(toy_cell.to_json())
    assert again == toy_cell and again.id == toy_cell.id
    (empty, _) = load(tmp_path, TOY + "\n[method_options.toy]\n").cells
    assert empty.id == plain[0].id  # an empty table changes nothing


@pytest.mark.parametrize(
    "options, expected, line",
    [
        (
            "stripe = 4",
            "toy's builder has no option 'stripe'; did you mean 'stripes' or 'last_stride' or 'triplet_margin'? Valid names: fuse, label_smoothing, last_stride, mode, pretrained, scale, stripes, triplet_margin",
            11,
        ),
        ("stripes = 4.5", "stripes must be an integer, not 4.5", 11),
        ("fuse = 1", "fuse must be true or false", 11),
        ("mode = 3", "mode must be a string", 11),
        ('backbone = "resnet50"', "'backbone' is not a method option: the grid sets it", 11),
        ("label_smoothing = 1.5", "label_smoothing must be between 0 and 1", 11),
    ],
)
def test_bad_method_options(tmp_path, toy, options, expected, line):
    message = error_of(tmp_path, TOY + f"\n[method_options.toy]\n{options}\n")
    assert expected in message and f"line {line}:" in message, message


def test_method_options_of_a_method_without_options_or_outside_the_grid(tmp_path, toy):
    message = error_of(tmp_path, BASE + "\n[method_options.baseline]\nwidth = 3\n")
    assert (
        "baseline's builder has no option 'width'; Valid names: label_smoothing, last_stride, pretrained, triplet_margin"
        in message
    )
    assert "line 11" in message
    message = error_of(tmp_path, BASE + "\n[method_options.toy]\nstripes = 3\n")
    assert "[grid] methods does not run 'toy'" in message and "line 10" in message
    assert "unknown method 'baselin'" in error_of(tmp_path, BASE + "\n[method_options.baselin]\n")


def test_an_including_spec_whose_world_size_cannot_split_a_grids_batch_is_refused(tmp_path):
    (tmp_path / "spreid.toml").write_text(
        '[grid]\nname = "b15"\nmethods = ["spreid"]\nbackbones = ["inception_v3"]\n'
        'train_datasets = ["market1501"]\n[train]\nids_per_batch = 15\nimages_per_id = 1\n'
    )
    (tmp_path / "all.toml").write_text('include = ["spreid.toml"]\n\n[resources]\nworld_size = 2\n')
    with pytest.raises(UserError) as info:
        load_spec(tmp_path / "all.toml")
    assert str(info.value).startswith(
        f"{tmp_path / 'all.toml'}, line 4: grid 'b15''s global batch of P = 15 identities x "
        "K = 1 images (15 images) cannot be split evenly over world_size = 2 processes"
    )
    assert "(1, 3, 5, 15)" in str(info.value)


def test_a_methods_revision_gives_its_cells_new_ids_and_leaves_the_others(tmp_path):
    """SSP-ReID's revision 1 (res4f taps, socks in the shoes): its cells computed another model before,
    so they get new ids; the baseline's id is the one computed by the spec parser of main at 5d25f70."""
    text = """
    [grid]
    methods = ["ssp-reid:s-reid", "baseline"]
    backbones = ["resnet50"]
    train_datasets = ["market1501"]
    [train]
    epochs = 30
    epoch_unit = "identities"
    """
    ssp, baseline = load(tmp_path, text).cells
    assert ssp.identity()["method_revision"] == 1 and "method_revision" not in baseline.identity()
    assert baseline.id == "8aebad5a1719" and ssp.id != "95404f62fb81"  # 95404f62fb81: s-reid at 5d25f70
