"""The GPU-hours estimate of `reidbench run SPEC --executor slurm --dry-run` (harness/executors/estimate.py)."""

from __future__ import annotations

import re

from harness.cli import main
from harness.executors.estimate import prior_rates, train_steps
from harness.spec import load_spec
from harness.store import PROFILE_SCHEMA, Store

SPEC = """
[grid]
name = "estimate"
methods = ["baseline"]
backbones = ["resnet50"]
train_datasets = ["market1501"]
seeds = [0, 1]

[train]
{schedule}
ids_per_batch = 16
images_per_id = 4

[resources]
gpus_per_node = 1
device = "cuda"

[slurm]
time = 60
"""


def _spec(tmp_path, schedule="iterations = 100000"):
    path = tmp_path / "estimate.toml"
    path.write_text(SPEC.format(schedule=schedule))
    return path


def _dry_run(tmp_path, capsys, spec) -> str:
    assert main(["run", str(spec), "--executor", "slurm", "--dry-run", "--store", str(tmp_path / "store")]) == 0
    return capsys.readouterr().out


def _gpu_profile(store: Store, rate: float) -> None:
    row = {name: None for name in PROFILE_SCHEMA.names}
    row.update(
        schema_version=1,
        profile_id="p1",
        source="profile",
        method="baseline",
        variant="bnneck",
        backbone="resnet50",
        input_height=256,
        input_width=128,
        batch_size=64,
        world_size=1,
        train_images_per_second=rate,
        train_images_per_second_per_device=rate,
        gpu_model="NVIDIA H100 80GB HBM3",
        gpu_count=1,
    )
    store.write_profile(row)


def test_without_profile_rows_the_per_backbone_prior_is_used_and_named(tmp_path, capsys):
    out = _dry_run(tmp_path, capsys, _spec(tmp_path))
    # The prior: 2470 images/s at 224 x 224 on one A100 for ResNet-50, i.e. 3781 at 256 x 128:
    # 100000 steps of 64 images are 1693 GPU-seconds per cell.
    assert abs(prior_rates()["resnet50"].at((256, 128)) - 2470 * 224 * 224 / (256 * 128)) < 1e-6
    assert "array 1 (2 cell(s)): 0.9 GPU-hours" in out and "total: 0.9 GPU-hours for 2 cell(s)" in out, out
    assert "rates: 2 cell(s) from the per-backbone prior shipped with reidbench (gpu_prior.csv" in out, out
    assert "implied --time per cell: 50 min" in out, out  # 1693 s x 1.1 + 10 min = 41 min, rounded up to 10 min


def test_the_stores_gpu_profile_rows_come_first_and_scale_with_the_input_size(tmp_path, capsys):
    _gpu_profile(Store(tmp_path / "store"), 1000.0)
    out = _dry_run(tmp_path, capsys, _spec(tmp_path))
    assert "total: 3.6 GPU-hours for 2 cell(s)" in out, out  # 2 x 100000 x 64 / 1000 s
    assert "rates: 2 cell(s) from the store's GPU profile rows [NVIDIA H100 80GB HBM3]" in out, out
    assert (
        "implied --time per cell: 130 min (the longest" in out and "with --time 60 it takes 3 attempts, requeued" in out
    ), out
    bigger = tmp_path / "bigger"
    bigger.mkdir()
    out = _dry_run(bigger, capsys, _spec(bigger, "iterations = 100000\ninput_size = [512, 128]"))
    assert (
        "total: 0.0 GPU-hours" not in out and "rates: 2 cell(s) from the per-backbone prior" in out
    )  # its own empty store
    _gpu_profile(Store(bigger / "store"), 1000.0)
    out = _dry_run(bigger, capsys, _spec(bigger, "iterations = 100000\ninput_size = [512, 128]"))
    assert "total: 7.1 GPU-hours" in out, out  # twice the pixels: half the rate


def test_epochs_count_at_the_published_training_set_size(tmp_path):
    (cell, _) = load_spec(_spec(tmp_path, 'epochs = 120\nepoch_unit = "identities"')).cells
    assert train_steps(cell) == [(120 * (751 // 16), (256, 128))]  # Market-1501: 751 training identities
    (cell, _) = load_spec(_spec(tmp_path, 'epochs = 120\nepoch_unit = "images"')).cells
    assert train_steps(cell) == [(120 * (12936 // 64), (256, 128))]  # 12,936 training images


def test_cpu_profile_rows_are_not_gpu_rates(tmp_path, capsys):
    store = Store(tmp_path / "store")
    _gpu_profile(store, 1000.0)
    row = store.read().profiles[0]
    store.write_profile({**row, "gpu_model": None})  # the same profile id: now a CPU measurement
    out = _dry_run(tmp_path, capsys, _spec(tmp_path))
    assert re.search(r"rates: 2 cell\(s\) from the per-backbone prior", out), out
