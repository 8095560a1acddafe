"""`reidbench profile` and its parts: NVML sampling (and why it is empty here), rows in the store."""

from __future__ import annotations

import json
import time

import pytest
import torch

from harness.cli import main
from harness.engine.gpu import GpuFigures, GpuSampler
from harness.profile import profile_targets, synthetic_batches
from harness.store import PROFILE_SCHEMA, Store
from methods import method_names, method_variants
from tests.helpers import cache_env, reidbench

TINY = [
    "--methods",
    "baseline",
    "--backbones",
    "resnet18",
    "--batch",
    "8",
    "--input",
    "32x16",
    "--steps",
    "2",
    "--warmup",
    "1",
]


def test_sampler_on_the_cpu_says_there_is_no_gpu():
    with GpuSampler([torch.device("cpu")]) as sampler:
        pass
    figures = sampler.figures()
    columns = figures.columns()
    assert figures.per_gpu == [] and columns["sm_utilization"] is None and columns["gpu_count"] is None
    assert "no NVIDIA GPU" in columns["gpu_note"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without an NVIDIA driver")
def test_sampler_without_a_driver_says_nvml_is_unavailable():
    with GpuSampler([torch.device("cuda", 0)]) as sampler:  # pynvml is installed, the driver is not
        pass
    assert sampler.figures().per_gpu == [] and "NVML is not available" in sampler.figures().columns()["gpu_note"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_sampler_on_a_gpu_samples_every_tenth_of_a_second():
    device = torch.device("cuda", 0)
    with GpuSampler([device]) as sampler:
        start = time.perf_counter()
        x = torch.randn(4096, 4096, device=device)
        while time.perf_counter() - start < 1.0:
            x = x @ x
            x /= x.norm()
        torch.cuda.synchronize(device)
    (gpu,) = sampler.figures(since=start).per_gpu
    assert gpu["samples"] >= 7 and gpu["sm_utilization"] > 50 and gpu["power_watts"] > 0 and gpu["sm_clock_mhz"] > 0


def test_gpu_columns_average_over_gpus_and_keep_each():
    per_gpu = [
        {
            "name": "H100",
            "uuid": str(i),
            "sm_utilization": u,
            "memory_utilization": 10.0,
            "power_watts": 300.0,
            "sm_clock_mhz": 1980.0,
            "memory_clock_mhz": 2619.0,
            "samples": 5,
        }
        for i, u in enumerate((90.0, 70.0))
    ]
    columns = GpuFigures(per_gpu).columns()
    assert columns["sm_utilization"] == 80.0 and columns["gpu_count"] == 2 and columns["gpu_model"] == "H100"
    assert json.loads(columns["per_gpu"]) == per_gpu and columns["gpu_note"] is None


def test_synthetic_batches_have_the_p_by_k_composition():
    batches = list(
        synthetic_batches(
            5, ids_per_batch=3, images_per_id=4, size=(32, 16), num_classes=10, device=torch.device("cpu")
        )
    )
    assert len(batches) == 5
    images, pids, _ = batches[0]
    assert images.shape == (12, 3, 32, 16)
    assert sorted(torch.bincount(pids, minlength=10).tolist())[-3:] == [4, 4, 4] and pids.max() < 10


def test_targets_from_flags_and_user_errors():
    targets, config, device = profile_targets(
        None, backbones=["resnet18"], batch=12, input_size="64X32", precision="fp32"
    )
    assert targets == [(m, v, "resnet18") for m in method_names() for v in method_variants(m)]  # every registered one
    assert ("baseline", "bnneck", "resnet18") in targets and device.type in ("cpu", "cuda")
    assert (config.ids_per_batch, config.images_per_id, config.input_size, config.precision) == (3, 4, (64, 32), "fp32")
    for bad, message in [
        ({"methods": ["baselin"]}, "did you mean 'baseline'"),
        ({"backbones": ["resnet5"]}, "resnet50"),
        ({"batch": 10}, "multiple of images_per_id = 4"),
        ({"input_size": "256"}, "HEIGHTxWIDTH"),
    ]:
        with pytest.raises(Exception, match=message):
            profile_targets(None, **bad)


def test_profile_writes_one_row_per_model_and_a_rerun_replaces_it(tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["profile", *TINY, "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "baseline:bnneck" in out and "Wrote 1 profile row" in out
    if not torch.cuda.is_available():
        assert "GPU columns empty: no NVIDIA GPU" in out
    (row,) = Store(store).read().profiles
    assert set(row) == set(PROFILE_SCHEMA.names)
    assert (row["source"], row["cell_id"], row["method"], row["variant"], row["backbone"]) == (
        "profile",
        None,
        "baseline",
        "bnneck",
        "resnet18",
    )
    assert (row["input_height"], row["input_width"], row["batch_size"], row["world_size"]) == (32, 16, 8, 1)
    assert (row["train_steps"], row["warmup_steps"]) == (2, 1)
    assert row["train_images_per_second"] > 0 and row["infer_images_per_second"] > 0
    assert row["train_images_per_second_per_device"] == row["train_images_per_second"]
    assert json.loads(row["options"]) == {"channels_last": True, "compile": False}
    if not torch.cuda.is_available():
        assert row["precision"] == "fp32" and row["sm_utilization"] is None and row["peak_memory_bytes"] is None
        assert "no NVIDIA GPU" in row["gpu_note"] and row["device"] == "cpu"

    assert main(["profile", *TINY, "--store", str(store)]) == 0
    (again,) = Store(store).read().profiles
    assert again["profile_id"] == row["profile_id"] and again["started_at"] >= row["started_at"]

    assert main(["profile", *TINY, "--no-channels-last", "--store", str(store)]) == 0
    assert len({r["profile_id"] for r in Store(store).read().profiles}) == 2


def test_profile_reads_the_spec_and_refuses_bad_flags(tmp_path, make_spec, capsys):
    spec = make_spec(train={"iterations": 5, "input_size": [32, 16], "ids_per_batch": 2, "images_per_id": 2})
    assert main(["profile", str(spec), "--steps", "1", "--warmup", "0", "--store", str(tmp_path / "store")]) == 0
    (row,) = Store(tmp_path / "store").read().profiles
    assert (row["backbone"], row["input_height"], row["batch_size"], row["device"]) == ("resnet18", 32, 4, "cpu")
    assert main(["profile", *TINY, "--methods", "nope", "--store", str(tmp_path / "s")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["profile", "--steps", "0", "--store", str(tmp_path / "s")]) == 2


@pytest.mark.slow
def test_a_training_cell_writes_its_profile_row(tmp_path, make_spec):
    """A tiny cell, 2 DDP processes, the training set on the device: its result rows and one profile row."""
    from harness.spec import load_spec

    spec = make_spec(
        "tiny",
        train={"iterations": 12, "images_per_id": 4, "eval_batch_size": 64, "check_every": 3, "data_on_device": True},
        synthetic={"ids": 40},
        resources={"world_size": 2},
    )
    run = reidbench("run", spec, "--store", "store", cwd=tmp_path, env=cache_env(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    (cell,) = load_spec(spec).cells
    contents = Store(tmp_path / "store").read()
    assert sorted(r["rerank"] for r in contents.rows) == [False, True]  # plain and re-ranked
    result = contents.rows[0]
    (profile,) = contents.profiles
    assert result["cell_id"] == profile["cell_id"] == cell.id and profile["source"] == "training"
    assert (profile["world_size"], profile["batch_size"], profile["train_steps"], profile["warmup_steps"]) == (
        2,
        16,
        6,
        6,
    )
    assert profile["train_images_per_second"] > 0 and profile["infer_images_per_second"] is None
    assert json.loads(profile["options"]) == {"channels_last": True, "compile": False, "data_on_device": True}
    assert profile["precision"] == "fp32" and "no NVIDIA GPU" in profile["gpu_note"]


def test_synthetic_batches_carry_the_cues_a_method_declares():
    from harness.profile import synthetic_batches

    plain, with_cues = (
        next(
            synthetic_batches(
                1, ids_per_batch=2, images_per_id=2, size=(64, 32), num_classes=5, device=torch.device("cpu"), cues=cues
            )
        )
        for cues in ((), ("pose", "mask"))
    )
    assert len(plain) == 3
    images, _, _, cues = with_cues
    assert set(cues) == {"pose", "mask"}
    assert cues["pose"].shape == (4, 13, 4, 2) and cues["mask"].shape == (4, 1, 64, 32)


def test_methods_with_cue_maps_are_profiled_with_random_cues(tmp_path):
    store = tmp_path / "store"
    assert (
        main(
            [
                "profile",
                "--methods",
                "gasm:full",
                "ssp-reid:s-reid",
                "--backbones",
                "resnet18",
                "--batch",
                "4",
                "--input",
                "64x32",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--store",
                str(store),
            ]
        )
        == 0
    )
    rows = Store(store).read().profiles
    assert sorted(r["method"] for r in rows) == ["gasm", "ssp-reid"]
    assert all(r["train_images_per_second"] > 0 and r["infer_images_per_second"] > 0 for r in rows)
