"""The command line: help on every command, and the user errors caught before any process starts."""

from __future__ import annotations

import socket

import pytest

from harness.cli import main
from harness.spec import load_spec
from harness.store import Store

SPEC = """
[grid]
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]

[train]
iterations = 1
ids_per_batch = {p}
images_per_id = {k}

[synthetic]
ids = 12

[resources]
world_size = 2

[method_options.baseline]
pretrained = {pretrained}
"""


def run(tmp_path, monkeypatch, capsys, **values):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(**{"p": 2, "k": 4, "pretrained": "false", **values}))
    code = main(["run", str(spec), "--store", str(tmp_path / "store")])
    return code, capsys.readouterr().err


def test_uncached_pretrained_weights_stop_the_run_before_it_starts(tmp_path, monkeypatch, capsys):
    code, err = run(tmp_path, monkeypatch, capsys, pretrained="true")
    assert code == 2 and "ImageNet weights for resnet18 are not cached" in err and str(tmp_path / "torch") in err
    assert not (tmp_path / "store").exists()


def test_batch_composition_must_fit_the_data_and_the_world(tmp_path, monkeypatch, capsys):
    code, err = run(tmp_path, monkeypatch, capsys, p=3, k=3)  # 9 images over 2 processes: refused before anything runs
    assert code == 2 and "Traceback" not in err and f"{tmp_path / 'spec.toml'}, line 16:" in err
    assert (
        "global batch of P = 3 identities x K = 3 images (9 images) cannot be split evenly over world_size = 2" in err
    )
    assert not (tmp_path / "store").exists() and not (tmp_path / "cache").exists()
    assert (
        run(tmp_path, monkeypatch, capsys, p=3, k=4, pretrained="true")[0] == 2
    )  # 12 images split: it goes on to the weights
    code, err = run(tmp_path, monkeypatch, capsys, p=40)
    assert code == 2 and "at most the 6 training identities" in err


def test_status_tells_states_apart(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        SPEC.format(p=2, k=4, pretrained="false").replace(
            'train_datasets = ["market1501"]', 'train_datasets = ["market1501"]\nseeds = [0, 1, 2, 3]'
        )
    )
    cells = load_spec(spec).cells
    store = Store(tmp_path / "store")
    store.write_state(cells[0].id, "done")  # but its rows are gone
    store.write_state(cells[1].id, "failed", reason="loss became non-finite at step 4: id=nan")
    store.write_state(cells[2].id, "running", hostname=socket.gethostname(), pid=2**22 + 7)  # no such process
    assert main(["status", str(spec), "--store", str(store.root)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "rows missing" in lines[cells[0].id]
    assert "failed" in lines[cells[1].id] and "non-finite at step 4" in lines[cells[1].id]
    assert "interrupted" in lines[cells[2].id]
    assert "not started" in lines[cells[3].id]


def test_every_command_has_help(capsys):
    for command in ([], ["run"], ["status"], ["report"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: reidbench {' '.join(command)}".rstrip())


def test_unknown_executor_is_refused_before_anything_else(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(p=2, k=4, pretrained="false"))
    # --dry-run would list the cells and stop; a misspelt executor must not pass for a valid one there either.
    assert main(["run", str(spec), "--store", str(tmp_path / "store"), "--executor", "locl", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--executor 'locl' is not an executor; did you mean 'local'?" in err


def test_cue_maps_are_checked_before_the_run(tmp_path, monkeypatch, capsys):
    # A method that trains on cue maps cannot keep its data on the device ...
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "spec.toml"
    base = (
        SPEC.format(p=2, k=4, pretrained="false")
        .replace('"baseline"', '"gasm:mask"')
        .replace("options.baseline", "options.gasm")
    )
    spec.write_text(base.replace("[train]", "[train]\ndata_on_device = true"))
    assert main(["run", str(spec), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert (
        "data_on_device keeps images only, but gasm:mask trains with cue maps (mask)" in err and "Traceback" not in err
    )
    # ... and its cue maps must be on disk, in every member of a union it trains on.
    root = tmp_path / "real"
    assert main(["data", "synth", "market1501", str(root), "--ids", "12"]) == 0
    mask = root / "cues" / "mask"
    for f in mask.rglob("*"):
        if f.is_file():
            f.unlink()
    for d in sorted(mask.rglob("*"), reverse=True):
        d.rmdir()
    mask.rmdir()
    spec.write_text(
        base.replace('["market1501"]', '["market1501+dukemtmc"]') + f'\n[datasets.market1501]\nroot = "{root}"\n'
    )
    capsys.readouterr()
    assert main(["run", str(spec), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert f"gasm:mask needs mask cue maps of market1501, but {mask} does not exist" in err
    assert "reidbench data check market1501" in err and not (tmp_path / "store").exists()


DRY = """
[grid]
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]
{finetune}
[train]
{length}
ids_per_batch = 2
images_per_id = 2

[synthetic]
ids = 12

[method_options.baseline]
pretrained = false
{phases}
"""


@pytest.mark.parametrize("unit", ["images", "identities"])
def test_dry_run_shows_the_steps_each_cell_will_train(tmp_path, monkeypatch, capsys, unit):
    from harness.data import load_dataset
    from harness.engine.cell import dataset_root

    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "spec.toml"
    spec.write_text(DRY.format(finetune="", length=f'epochs = 7\nepoch_unit = "{unit}"', phases=""))
    (cell,) = load_spec(spec).cells
    train = load_dataset("market1501", dataset_root(cell.dataset("market1501"), cell.synthetic)).train
    per_epoch = len(train) // 4 if unit == "images" else len({s.pid for s in train}) // 2
    assert main(["run", str(spec), "--store", str(tmp_path / "store"), "--dry-run"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(cell.id))
    assert f" 7 x {per_epoch} = {7 * per_epoch:,} ({unit}) " in line, line
    assert not (tmp_path / "store").exists()  # nothing ran


def test_dry_run_shows_the_steps_of_each_phase(tmp_path, monkeypatch, capsys):
    from harness.data import load_dataset
    from harness.engine.cell import dataset_root

    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "spec.toml"
    phases = '[[train.phases]]\niterations = 1500\n\n[[train.phases]]\nepochs = 3\non = "finetune"\n'
    spec.write_text(DRY.format(finetune='finetune_datasets = ["dukemtmc"]', length="", phases=phases))
    (cell,) = load_spec(spec).cells
    duke = load_dataset("dukemtmc", dataset_root(cell.dataset("dukemtmc"), cell.synthetic)).train
    assert main(["run", str(spec), "--store", str(tmp_path / "store"), "--dry-run"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(cell.id))
    per_epoch = len(duke) // 4
    assert f" 1,500 + 3 x {per_epoch} = {1500 + 3 * per_epoch:,} (images) " in line, line
