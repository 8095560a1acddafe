"""The tests' shared spec template: what `make_spec` writes is the spec its keywords describe."""

from __future__ import annotations

from harness.spec import load_spec
from tests.helpers import TINY


def test_the_template_is_one_tiny_cpu_cell(make_spec):
    spec = load_spec(make_spec("tiny"))
    (cell,) = spec.cells
    assert (spec.name, cell.method, cell.backbone, cell.train_dataset) == ("tiny", "baseline", "resnet18", "market1501")
    assert (cell.train.input_size, cell.train.iterations, cell.model_kwargs()["pretrained"]) == ((64, 32), 10, False)
    assert (spec.resources.world_size, spec.resources.device, cell.dataset("market1501").synthetic) == (1, "cpu", True)


def test_keywords_merge_over_the_template_and_none_leaves_a_key_out(make_spec):
    (cell,) = load_spec(
        make_spec(train={"iterations": 3}, method_options={"baseline": {"pretrained": True}}, synthetic=None)
    ).cells
    assert cell.train.iterations == 3 and cell.train.ids_per_batch == TINY["train"]["ids_per_batch"]
    assert cell.model_kwargs()["pretrained"] is True  # as asked; the tests' template turns it off
    assert "pretrained" not in TINY["train"] and TINY["train"]["iterations"] == 10  # the template is not changed


def test_nested_tables_and_arrays_of_tables(make_spec, tmp_path):
    path = make_spec(
        grid={
            "backbones": ["resnet18", "resnet50"],
            "train_datasets": ["market1501+dukemtmc"],
            "finetune_datasets": ["market1501"],
        },
        train={
            "iterations": None,
            "phases": [{"iterations": 2, "input_size": [32, 16]}, {"iterations": 3, "lr": 0.001, "on": "finetune"}],
        },
        datasets={"dukemtmc": {"root": "duke"}},
        combine=[{"name": "pair", "method": "baseline", "parts": ["baseline/resnet18", "baseline/resnet50"]}],
    )
    spec = load_spec(path)
    cell = spec.cells[0]
    assert [(p.iterations, p.on) for p in cell.train.phases] == [(2, "train"), (3, "finetune")]
    assert cell.dataset("dukemtmc").root == str((tmp_path / "duke").resolve())
    (combo,) = spec.combinations
    assert combo.backbone == "resnet18+resnet50"
