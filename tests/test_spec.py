"""Spec parsing, grid expansion, cell ids and the errors a bad spec gives."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.spec import load_spec

REPO = Path(__file__).resolve().parent.parent

BASE = """
[grid]
name = "t"
methods = ["baseline"]
backbones = ["resnet50"]
train_datasets = ["market1501"]
seeds = [0]

[train]
iterations = 10
lr = 3.5e-4
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def only_id(tmp_path: Path, text: str, name: str = "spec.toml") -> str:
    (cell,) = load_spec(write(tmp_path, text, name)).cells
    return cell.id


def test_smoke_spec_is_one_baseline_cell_on_synthetic_market():
    spec = load_spec(REPO / "jobs" / "smoke.toml")
    (cell,) = spec.cells
    assert (cell.method, cell.variant, cell.backbone, cell.train_dataset) == (
        "baseline",
        "bnneck",
        "resnet18",
        "market1501",
    )
    assert cell.test_datasets == ("market1501",)
    assert cell.dataset("market1501").synthetic
    assert spec.resources.world_size == 2 and spec.resources.device == "cpu"
    assert cell.train.iterations is not None and cell.train.iterations <= 500


def test_grid_is_the_product_of_its_lists(tmp_path):
    spec = load_spec(
        write(tmp_path, BASE.replace('["resnet50"]', '["resnet50", "resnet18"]').replace("[0]", "[0, 1, 2]"))
    )
    assert len(spec.cells) == 6
    assert len({c.id for c in spec.cells}) == 6
    assert {(c.backbone, c.seed) for c in spec.cells} == {(b, s) for b in ("resnet50", "resnet18") for s in (0, 1, 2)}


def test_test_datasets_default_to_the_training_set_and_can_be_listed(tmp_path):
    (cell,) = load_spec(
        write(tmp_path, BASE.replace("seeds = [0]", 'seeds = [0]\ntest_datasets = ["market1501"]'))
    ).cells
    assert cell.test_datasets == ("market1501",)


def test_id_ignores_key_order_spelled_out_defaults_and_number_spelling(tmp_path):
    reference = only_id(tmp_path, BASE)
    reordered = """
    [train]
    lr = 0.00035
    iterations = 10

    [grid]
    seeds = [0]
    train_datasets = ["market1501"]
    backbones = ["resnet50"]
    methods = ["baseline:bnneck"]
    name = "another-grid-name"
    """
    assert only_id(tmp_path, reordered, "b.toml") == reference
    spelled = (
        BASE
        + "weight_decay = 5e-4\nmilestones = [40, 70]\n[method_options.baseline]\nlabel_smoothing = 0.1\npretrained = true\n"
    )
    assert only_id(tmp_path, spelled, "c.toml") == reference  # the builder's defaults, spelled out
    how_not_what = BASE + "num_workers = 7\nlog_every = 3\n[resources]\nworld_size = 4\n"
    assert only_id(tmp_path, how_not_what, "d.toml") == reference


def test_test_datasets_are_not_part_of_the_id(tmp_path):
    """Testing a kept model on another set adds rows under the same id (id version 2)."""
    reference = only_id(tmp_path, BASE)
    more = BASE.replace("seeds = [0]", 'seeds = [0]\ntest_datasets = ["market1501", "dukemtmc"]')
    assert only_id(tmp_path, more, "b.toml") == reference
    real_test_set = more + '\n[datasets.dukemtmc]\nroot = "duke"\n'  # where a test set lies: not either
    assert only_id(tmp_path, real_test_set, "c.toml") == reference


@pytest.mark.parametrize(
    "option", ["label_smoothing = 0.0", "triplet_margin = 0.5", "pretrained = false", "last_stride = 2"]
)
def test_model_settings_are_method_options_and_part_of_the_id(tmp_path, option):
    assert only_id(tmp_path, BASE + f"\n[method_options.baseline]\n{option}\n", "b.toml") != only_id(tmp_path, BASE)


@pytest.mark.parametrize("key, value", [("label_smoothing", "0.0"), ("pretrained", "false")])
def test_model_settings_in_train_are_refused_with_where_they_went(tmp_path, key, value):
    message = error_of(tmp_path, BASE + f"{key} = {value}\n")
    assert f"'{key}' is a model setting, no longer a [train] key" in message and "line 12" in message
    assert f"[method_options.baseline] {key} = {value}" in message


def test_an_including_spec_tests_a_cell_on_the_test_sets_of_both_specs(tmp_path):
    write(tmp_path, BASE, "a.toml")
    write(tmp_path, BASE.replace("seeds = [0]", 'seeds = [0]\ntest_datasets = ["dukemtmc"]'), "b.toml")
    (cell,) = load_spec(write(tmp_path, 'include = ["a.toml", "b.toml"]\n', "all.toml")).cells
    assert cell.test_datasets == ("market1501", "dukemtmc") and {d.name for d in cell.datasets} == {
        "market1501",
        "dukemtmc",
    }


def test_default_epochs_equal_spelled_out_epochs(tmp_path):
    implicit = BASE.replace("iterations = 10\n", "")
    assert only_id(tmp_path, implicit) == only_id(
        tmp_path, implicit.replace("[train]", "[train]\nepochs = 120"), "b.toml"
    )


@pytest.mark.parametrize(
    "change",
    [
        ("seeds = [0]", "seeds = [1]"),
        ("lr = 3.5e-4", "lr = 3.6e-4"),
        ('"resnet50"', '"resnet18"'),
        ("iterations = 10", "iterations = 11"),
    ],
)
def test_id_changes_with_the_experiment(tmp_path, change):
    assert only_id(tmp_path, BASE) != only_id(tmp_path, BASE.replace(*change), "b.toml")


def test_real_dataset_root_is_resolved_against_the_spec_folder_and_changes_the_id(tmp_path):
    spec = load_spec(write(tmp_path, BASE + '\n[datasets.market1501]\nroot = "data"\n'))
    (cell,) = spec.cells
    assert cell.dataset("market1501").root == str((tmp_path / "data").resolve())
    assert not cell.dataset("market1501").synthetic
    assert cell.id != only_id(tmp_path, BASE, "synthetic.toml")


def test_cell_round_trips_through_json(tmp_path):
    (cell,) = load_spec(write(tmp_path, BASE)).cells
    again = type(cell).from_json(cell.to_json())
    assert again == cell and again.id == cell.id


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as info:
        load_spec(write(tmp_path, text))
    return str(info.value)


def test_unknown_method_names_line_and_closest_names(tmp_path):
    message = error_of(tmp_path, BASE.replace('["baseline"]', '["baselin"]'))
    assert "unknown method 'baselin'" in message
    assert "line 4" in message and "did you mean 'baseline'" in message


def test_unknown_backbone_in_a_multiline_list_points_at_its_line(tmp_path):
    text = BASE.replace('backbones = ["resnet50"]', 'backbones = [\n  "resnet50",\n  "resnet5O",\n]')
    message = error_of(tmp_path, text)
    assert "unknown backbone 'resnet5O'" in message and "line 7" in message and "'resnet50'" in message


def test_unknown_dataset_and_variant(tmp_path):
    assert "unknown dataset 'market'" in error_of(tmp_path, BASE.replace('["market1501"]', '["market"]'))
    message = error_of(tmp_path, BASE.replace('["baseline"]', '["baseline:fancy"]'))
    assert "no variant 'fancy'" in message and "bnneck" in message


def test_unknown_key_is_an_error_with_its_line(tmp_path):
    message = error_of(tmp_path, BASE + "learning_rate = 0.1\n")
    assert "unknown key 'learning_rate' in [train]" in message and "line 12" in message
    assert "unknown key 'seed' in [grid]" in error_of(tmp_path, BASE.replace("seeds =", "seed ="))
    assert "unknown key 'trian'" in error_of(tmp_path, BASE + "[trian]\nlr = 1\n")


def test_wrong_types_and_values(tmp_path):
    assert "lr must be a number" in error_of(tmp_path, BASE.replace("lr = 3.5e-4", 'lr = "fast"'))
    assert "pretrained must be true or false" in error_of(
        tmp_path, BASE + "[method_options.baseline]\npretrained = 1\n"
    )
    assert "either iterations or epochs" in error_of(tmp_path, BASE + "epochs = 3\n")
    assert "world_size must be at least 1" in error_of(tmp_path, BASE + "[resources]\nworld_size = 0\n")
    assert "same cell twice" in error_of(tmp_path, BASE.replace("seeds = [0]", "seeds = [0, 0]"))
    assert "no [grid] table" in error_of(tmp_path, "[train]\nlr = 1.0\n")


def test_invalid_toml_and_missing_file(tmp_path):
    assert "is not valid TOML" in error_of(tmp_path, "[grid\nmethods = 1")
    with pytest.raises(UserError, match="Cannot read spec"):
        load_spec(tmp_path / "nope.toml")


def test_cli_user_error_exits_2_with_one_paragraph_and_no_traceback(tmp_path, capsys):
    spec = write(tmp_path, BASE.replace('["baseline"]', '["baselin"]'))
    assert main(["run", str(spec), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reidbench: error:") and "Traceback" not in err and err.count("\n") == 1


def test_installed_command_exits_2_without_traceback(tmp_path):
    spec = write(tmp_path, BASE + "batch = 3\n")
    command = Path(sys.executable).parent / "reidbench"  # the console script pip installed
    done = subprocess.run([str(command), "status", str(spec)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "unknown key 'batch' in [train]" in done.stderr and "Traceback" not in done.stderr


def test_include_takes_the_cells_of_other_specs_once_each(tmp_path):
    (tmp_path / "sub").mkdir()
    write(
        tmp_path,
        'grid.name = "a"\ngrid.methods = ["baseline"]\ngrid.backbones = ["resnet18", "resnet50"]\n'
        'grid.train_datasets = ["market1501"]\n',
        "a.toml",
    )
    write(
        tmp_path,
        'grid.name = "b"\ngrid.methods = ["baseline"]\ngrid.backbones = ["resnet50"]\n'
        'grid.train_datasets = ["market1501", "dukemtmc"]\ntrain.lr = 1e-3\n',
        "sub/b.toml",
    )
    write(
        tmp_path,
        'grid.name = "a2"\ngrid.methods = ["baseline"]\ngrid.backbones = ["resnet18"]\n'
        'grid.train_datasets = ["market1501"]\n',
        "a2.toml",
    )
    spec = load_spec(
        write(tmp_path, 'include = ["a.toml", "sub/b.toml", "a2.toml"]\n[resources]\nworld_size = 2\n', "all.toml")
    )
    a, b, a2 = (load_spec(tmp_path / f) for f in ("a.toml", "sub/b.toml", "a2.toml"))
    assert [c.id for c in spec.cells] == [c.id for c in a.cells + b.cells]  # a2's cell is a's resnet18 cell
    assert {c.grid for c in spec.cells} == {"a", "b"} and spec.name == "all" and spec.resources.world_size == 2
    assert {c.train.lr for c in spec.cells if c.grid == "b"} == {1e-3}


@pytest.mark.parametrize(
    "text,message",
    [
        ('include = ["missing.toml"]\n', r"all.toml, line 1: include: there is no spec 'missing.toml'"),
        ('include = "a.toml"\n', r"include must be a non-empty list"),
        ('include = ["all.toml"]\n', r"includes this spec again \(a cycle\)"),
        ('include = ["a.toml"]\n[train]\nlr = 1\n', r"unknown key 'train' in the top level"),
    ],
)
def test_include_errors_name_the_file_and_line(tmp_path, text, message):
    write(
        tmp_path,
        'grid.methods = ["baseline"]\ngrid.backbones = ["resnet18"]\ngrid.train_datasets = ["market1501"]\n',
        "a.toml",
    )
    with pytest.raises(UserError, match=message):
        load_spec(write(tmp_path, text, "all.toml"))


def test_an_including_spec_combines_cells_of_different_included_specs(tmp_path):
    for name, backbone, lr in (("a", "resnet18", "1e-3"), ("b", "resnet50", "2e-3")):
        write(
            tmp_path,
            f'grid.name = "{name}"\ngrid.methods = ["baseline"]\ngrid.backbones = ["{backbone}"]\n'
            f'grid.train_datasets = ["market1501"]\ntrain.lr = {lr}\n',
            f"{name}.toml",
        )
    spec = load_spec(
        write(
            tmp_path,
            'include = ["a.toml", "b.toml"]\n[[combine]]\nname = "pair"\nmethod = "baseline"\n'
            'parts = ["baseline/resnet18", "baseline/resnet50"]\n',
            "all.toml",
        )
    )
    (combination,) = spec.combinations
    assert [c.id for c in combination.parts] == [
        c.id for c in spec.cells
    ] and combination.backbone == "resnet18+resnet50"
    with pytest.raises(UserError, match=r"bad.toml, line 5: part .baseline/resnet152. is not a cell"):
        load_spec(
            write(
                tmp_path,
                'include = ["a.toml", "b.toml"]\n[[combine]]\nname = "pair"\nmethod = "baseline"\n'
                'parts = ["baseline/resnet18", "baseline/resnet152"]\n',
                "bad.toml",
            )
        )


def test_env_and_collective_timeout_are_how_cells_run_not_what_they_are(tmp_path):
    plain = load_spec(write(tmp_path, BASE, "a.toml"))
    spec = load_spec(
        write(
            tmp_path,
            BASE
            + """
[resources]
collective_timeout = 0.5

[env]
NCCL_SOCKET_IFNAME = "ib0"
NCCL_IB_DISABLE = 1
TORCH_NCCL_BLOCKING_WAIT = true

[ray]
placement_strategy = "STRICT_SPREAD"
""",
            "b.toml",
        )
    )
    assert spec.resources.collective_timeout == 0.5 and spec.ray.placement_strategy == "STRICT_SPREAD"
    assert spec.resources.env == (
        ("NCCL_IB_DISABLE", "1"),
        ("NCCL_SOCKET_IFNAME", "ib0"),
        ("TORCH_NCCL_BLOCKING_WAIT", "true"),
    )
    assert (
        spec.cells[0].id == plain.cells[0].id and plain.resources.env == () and plain.resources.collective_timeout == 30
    )


@pytest.mark.parametrize(
    "table, message",
    [
        (
            '[env]\nMASTER_PORT = "1234"',
            "line 14: MASTER_PORT is set for each rank by the launcher (torchrun, SLURM or Ray); remove it from [env]",
        ),
        ('[env]\n"1BAD" = "x"', "line 14: '1BAD' is not an environment variable name"),
        ('[env]\nFOO = ["a"]', "line 14: FOO must be a string or a number"),
        ('[resources]\nenv = {FOO = "x"}', "line 14: unknown key 'env' in [resources]"),
        ("[resources]\ncollective_timeout = 0", "line 14: collective_timeout must be a positive number of minutes"),
        (
            '[ray]\nplacement_strategy = "SPREAD_STRICT"',
            "line 14: unknown placement_strategy 'SPREAD_STRICT'; did you mean",
        ),
    ],
)
def test_bad_env_and_timeouts_are_refused_naming_the_line(tmp_path, table, message):
    with pytest.raises(UserError) as err:
        load_spec(write(tmp_path, BASE + "\n" + table + "\n"))
    assert message in str(err.value), str(err.value)
