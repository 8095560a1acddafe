"""User errors the `run` command catches before any process starts."""

from __future__ import annotations

from harness.cli import main

SPEC = """
[grid]
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]

[train]
iterations = 1
ids_per_batch = {p}
pretrained = {pretrained}

[synthetic]
ids = 12

[resources]
world_size = 2
"""


def run(tmp_path, monkeypatch, capsys, **values):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(**{"p": 2, "pretrained": "false", **values}))
    code = main(["run", str(spec), "--store", str(tmp_path / "store")])
    return code, capsys.readouterr().err


def test_uncached_pretrained_weights_stop_the_run_before_it_starts(tmp_path, monkeypatch, capsys):
    code, err = run(tmp_path, monkeypatch, capsys, pretrained="true")
    assert code == 2 and "ImageNet weights for resnet18 are not cached" in err and str(tmp_path / "torch") in err
    assert not (tmp_path / "store").exists()


def test_batch_composition_must_fit_the_data_and_the_world(tmp_path, monkeypatch, capsys):
    code, err = run(tmp_path, monkeypatch, capsys, p=3)
    assert code == 2 and "ids_per_batch = 3" in err and "divisible by [resources] world_size = 2" in err
    code, err = run(tmp_path, monkeypatch, capsys, p=40)
    assert code == 2 and "at most the 6 training identities" in err
