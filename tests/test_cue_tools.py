"""`reidbench cues make` and `reidbench cues import`: shapes, formats, alignment with the image, resume,
the papers' tools' real output formats, and the errors for missing or malformed files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.cli import main
from harness.cue_tools.files import write_atomic
from harness.cue_tools.make import make_cues
from harness.cue_tools.models import VOC_PERSON, coco_to_gasm, pick_person
from harness.data.cues import load_cue
from tests.helpers import cache_env, reidbench, wait_for, write_spec

H, W = 128, 64
NAMES = {"query": ["0001_c1_a", "0002_c1_a"], "gallery": ["0001_c2_a", "0002_c2_a", "0003_c2_a"]}


def folder_dataset(root: Path) -> list[str]:
    """A `folder` dataset of five grey 64x128 PNGs with a white box at rows 40-80, columns 20-44; its keys."""
    keys = []
    for split, names in NAMES.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            pixels = np.full((H, W, 3), 60, np.uint8)
            pixels[40:80, 20:44] = 250
            Image.fromarray(pixels).save(root / split / f"{name}.png")
            keys.append(f"{split}/{name}")
    return keys


def cli(*args) -> int:
    return main([str(a) for a in args])


# --- the models' pieces ----------------------------------------------------------------------------


def test_coco_17_keypoints_become_gasms_13():
    points = np.stack([np.arange(17) * 2.0, np.arange(17) * 3.0], 1)
    scores = np.linspace(0.1, 0.9, 17)
    scores[0] = 0  # no nose: the head comes from the eyes and ears, weighted by their scores
    out = coco_to_gasm(points, scores)
    assert out.shape == (13, 3)
    face = scores[1:5]
    assert np.allclose(out[0, :2], (points[1:5] * face[:, None]).sum(0) / face.sum())
    assert out[0, 2] == pytest.approx(face.max())
    assert np.allclose(out[1:, :2], points[5:]) and np.allclose(out[1:, 2], scores[5:])  # shoulders ... ankles
    assert coco_to_gasm(points, np.zeros(17))[:, 2].sum() == 0  # nothing seen, nothing scored


def test_the_person_kept_is_the_one_that_fills_the_crop():
    boxes = torch.tensor([[0.0, 0, 20, 30], [2, 3, 62, 126], [30, 60, 64, 128]])
    assert pick_person(boxes, torch.tensor([0.99, 0.8, 0.9]), (H, W)) == 1
    assert pick_person(boxes[:0], torch.tensor([]), (H, W)) is None


class BrightIsPerson(torch.nn.Module):
    """A stand-in segmentation network from real layers: 'person' where the pixel is bright."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 21, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[VOC_PERSON] = 4.0  # normalised brightness > 0 -> person wins the softmax

    def forward(self, x):
        return {"out": self.conv(x)}


def test_made_masks_land_where_the_person_is_and_have_the_images_size(tmp_path):
    keys = folder_dataset(tmp_path)
    written, skipped = make_cues(
        "mask",
        "folder",
        tmp_path,
        device=torch.device("cpu"),
        batch_size=2,
        size=96,
        workers=0,
        model=BrightIsPerson(),
    )
    assert (written, skipped) == (5, 0)
    for key in keys:
        mask = load_cue(tmp_path, "mask", key, (H, W))
        assert mask.shape == (H, W) and mask.dtype == np.uint8
        assert mask[45:75, 24:40].min() > 200 and mask[:30].max() < 50 and mask[90:].max() < 50
    assert make_cues("mask", "folder", tmp_path, device=torch.device("cpu"), workers=0, model=BrightIsPerson()) == (
        0,
        5,
    )


def test_made_pose_files_with_random_weights_are_13_keypoints_inside_the_image(tmp_path):
    keys = folder_dataset(tmp_path)
    assert (
        cli(
            "cues",
            "make",
            "pose",
            "--dataset",
            "folder",
            "--root",
            tmp_path,
            "--random-weights",
            "--size",
            128,
            "--proposals",
            10,
            "--workers",
            0,
            "--batch-size",
            3,
        )
        == 0
    )
    for key in keys:
        pose = load_cue(tmp_path, "pose", key, (H, W))
        assert pose.shape == (13, 3) and (pose[:, 2] >= 0).all() and (pose[:, 2] <= 1).all()
        seen = pose[:, 2] > 0
        assert (pose[seen, 0] <= W + 1).all() and (pose[seen, 1] <= H + 1).all()
    assert cli("data", "check", "folder", tmp_path, "--cues", "pose") == 0


def test_make_without_cached_weights_names_the_fetch_command(tmp_path, monkeypatch, capsys):
    folder_dataset(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-cache"))
    assert cli("cues", "make", "mask", "--dataset", "folder", "--root", tmp_path, "--workers", 0) == 2
    err = capsys.readouterr().err
    assert "reidbench weights fetch deeplabv3-coco" in err and "Traceback" not in err


def test_a_write_is_whole_or_absent(tmp_path, monkeypatch):
    def broken(stem, raw):
        path = stem.with_name(stem.name + ".png")
        path.write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    from harness.data import cues

    monkeypatch.setitem(
        cues.REGISTRY, "mask", cues.REGISTRY["mask"].__class__(**{**cues.REGISTRY["mask"].__dict__, "write": broken})
    )
    with pytest.raises(OSError):
        write_atomic(tmp_path, "mask", "query/x", np.zeros((4, 4), np.uint8))
    assert not (tmp_path / "cues/mask/query/x.png").exists()


# --- import: the tools' own formats ------------------------------------------------------------------


def bgr_iuv(part: int) -> np.ndarray:
    """What DensePose's infer_simple.py writes: cv2.imwrite of the (I, U, V) array, i.e. on disk B = I, G = U, R = V."""
    iuv = np.zeros((H, W, 3), np.uint8)
    iuv[40:80, 20:44] = (part, 100, 200)
    return iuv[..., ::-1]  # cv2 takes channel 0 as blue: the PNG's RGB is (V, U, I)


def test_densepose_iuv_pngs_written_bgr_are_imported_with_i_in_red(tmp_path, capsys):
    keys = folder_dataset(tmp_path)
    src = tmp_path / "densepose-out"
    src.mkdir()
    for key in keys:  # a flat output folder, as infer_simple.py writes one
        Image.fromarray(bgr_iuv(2)).save(src / f"{Path(key).name}_IUV.png")
    assert cli("cues", "import", "densepose", src, "--dataset", "folder", "--root", tmp_path) == 0
    iuv = load_cue(tmp_path, "densepose", keys[0], (H, W))
    assert tuple(iuv[60, 30]) == (2, 100, 200) and tuple(iuv[10, 10]) == (0, 0, 0)
    assert cli("data", "check", "folder", tmp_path, "--cues", "densepose") == 0
    out = capsys.readouterr().out
    assert "no problems" in out


def test_an_rgb_ordered_iuv_is_refused_with_a_hint(tmp_path, capsys):
    keys = folder_dataset(tmp_path)
    src = tmp_path / "out"
    src.mkdir()
    for key in keys:
        Image.fromarray(np.ascontiguousarray(bgr_iuv(2)[..., ::-1] * np.uint8(1) + np.array([0, 0, 0], np.uint8))).save(
            src / f"{Path(key).name}_IUV.png"
        )
    assert cli("cues", "import", "densepose", src, "--dataset", "folder", "--root", tmp_path) == 2
    err = capsys.readouterr().err
    assert "5 of 5" in err and "blue channel" in err and "already RGB-ordered" in err


def test_jppnet_lip_labels_are_imported_and_grouped_into_regions(tmp_path, capsys):
    keys = folder_dataset(tmp_path)
    src = tmp_path / "jppnet"
    for key in keys:  # mirrored folders this time
        labels = np.zeros((H, W), np.uint8)
        labels[40:60, 20:44] = 5  # LIP 5 upper-clothes
        labels[60:80, 20:44] = 9  # LIP 9 pants
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(src / f"{key}.png")
        Image.fromarray(np.stack([labels * 10] * 3, -1)).save(src / f"{key}_vis.png")  # JPPNet's colour picture
    assert cli("cues", "import", "parsing", src, "--dataset", "folder", "--root", tmp_path) == 0
    from harness.data.cues import REGISTRY

    raw = load_cue(tmp_path, "parsing", keys[0], (H, W))
    regions = REGISTRY["parsing"].finish(REGISTRY["parsing"].tensor(raw, None), (H, W), 16)
    assert regions.shape == (5, H, W)
    assert regions[2, 50, 30] > 0 and regions[3, 70, 30] > 0 and regions[2, 70, 30] == 0 and regions[0, 5, 5] == 0
    # the colour picture is not a label map
    for key in keys:
        (src / f"{key}_vis.png").replace(src / f"{key}.png")
    assert cli("cues", "import", "parsing", src, "--dataset", "folder", "--root", tmp_path, "--force") == 2
    assert "_vis.png" in capsys.readouterr().err


def coco_points(x: float, y: float) -> list[float]:
    """17 COCO keypoints: the face around (x, y - 30), the body points below, all visible (v = 2)."""
    out = []
    for i in range(17):
        out += [x + (i % 3), y - 30 + 3 * i, 2]
    return out


def test_coco_keypoints_json_both_forms(tmp_path):
    keys = folder_dataset(tmp_path)
    images = [{"id": i, "file_name": f"{Path(k).name}.png"} for i, k in enumerate(keys)]
    annotations = [{"image_id": i, "category_id": 1, "keypoints": coco_points(30, 60), "score": 0.9} for i in range(4)]
    annotations.append({"image_id": 0, "category_id": 1, "keypoints": [0] * 51, "score": 0.2})  # a weaker person
    src = tmp_path / "pose.json"
    src.write_text(json.dumps({"images": images, "annotations": annotations}))  # image 4: listed, no person
    assert cli("cues", "import", "pose", src, "--dataset", "folder", "--root", tmp_path) == 0
    pose = load_cue(tmp_path, "pose", keys[0], (H, W))
    assert pose.shape == (13, 3) and tuple(pose[1]) == (32.0, 45.0, 1.0)  # left shoulder = COCO 5
    assert pose[0, 1] == pytest.approx(36.0)  # head: the mean of COCO 0-4 (y 30, 33, 36, 39, 42)
    assert load_cue(tmp_path, "pose", keys[4], (H, W))[:, 2].sum() == 0
    results = [{"image_id": f"{k}.png", "category_id": 1, "keypoints": coco_points(20, 50), "score": 1} for k in keys]
    src.write_text(json.dumps(results))
    assert cli("cues", "import", "pose", src, "--dataset", "folder", "--root", tmp_path, "--force") == 0
    assert tuple(load_cue(tmp_path, "pose", keys[4], (H, W))[1]) == (22.0, 35.0, 1.0)
    results = [{**r, "image_id": f"/data/elsewhere/{k}.jpg"} for r, k in zip(results, keys)]  # absolute paths
    results[0]["keypoints"] = coco_points(10, 50)
    src.write_text(json.dumps(results))
    assert cli("cues", "import", "pose", src, "--dataset", "folder", "--root", tmp_path, "--force") == 0
    assert tuple(load_cue(tmp_path, "pose", keys[0], (H, W))[1]) == (12.0, 35.0, 1.0)


def test_flat_names_that_fit_several_images_are_ambiguous(tmp_path, capsys):
    keys = folder_dataset(tmp_path)
    Image.open(tmp_path / "query/0001_c1_a.png").save(tmp_path / "gallery/0001_c1_a.png")  # a name in both splits
    results = [{"image_id": f"{Path(k).name}.png", "keypoints": coco_points(30, 60), "score": 1} for k in keys]
    (tmp_path / "pose.json").write_text(json.dumps(results))
    assert cli("cues", "import", "pose", tmp_path / "pose.json", "--dataset", "folder", "--root", tmp_path) == 2
    assert "ambiguous" in capsys.readouterr().err and not (tmp_path / "cues/pose/query/0001_c1_a.txt").exists()
    src = tmp_path / "masks"
    src.mkdir()
    for key in keys:
        Image.fromarray(np.zeros((H, W), np.uint8)).save(src / f"{Path(key).name}.png")
    assert cli("cues", "import", "mask", src, "--dataset", "folder", "--root", tmp_path) == 2
    assert "would serve 2 images" in capsys.readouterr().err


def test_keypoints_outside_the_image_and_unknown_images_are_named(tmp_path, capsys):
    keys = folder_dataset(tmp_path)
    results = [{"image_id": f"{Path(k).name}.jpg", "keypoints": coco_points(30, 60), "score": 1} for k in keys[1:]]
    results[0]["keypoints"] = coco_points(300, 60)  # a resized frame's coordinates
    src = tmp_path / "pose.json"
    src.write_text(json.dumps(results))
    assert cli("cues", "import", "pose", src, "--dataset", "folder", "--root", tmp_path) == 2
    err = capsys.readouterr().err
    assert "2 of 5" in err and "0001_c1_a" in err and "outside the 64x128 image" in err
    assert len(list((tmp_path / "cues/pose").rglob("*.txt"))) == 3  # the good ones are written
    src.write_text("{not json")
    assert cli("cues", "import", "pose", src, "--dataset", "folder", "--root", tmp_path) == 2
    assert "COCO keypoints JSON" in capsys.readouterr().err


def test_missing_and_malformed_maps_are_named_together_and_a_rerun_converts_only_the_rest(tmp_path, capsys):
    keys = folder_dataset(tmp_path)
    src = tmp_path / "saliency"
    src.mkdir()
    for key in keys[:3]:
        Image.fromarray(np.full((H, W), 128, np.uint8)).save(src / f"{Path(key).name}.png")
    (src / f"{Path(keys[3]).name}.png").write_bytes(b"not a png")  # keys[4]: missing
    assert cli("cues", "import", "saliency", src, "--dataset", "folder", "--root", tmp_path) == 2
    err = capsys.readouterr().err
    assert "2 of 5" in err and f"missing: {src / Path(keys[4]).name}.png" in err
    assert f"malformed: {src / Path(keys[3]).name}.png cannot read it as an image" in err
    assert "Traceback" not in err
    Image.fromarray(np.full((H // 2, W // 2), 255, np.uint8)).save(src / f"{Path(keys[3]).name}.png")  # half size
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(src / f"{Path(keys[4]).name}.png")
    assert cli("cues", "import", "saliency", src, "--dataset", "folder", "--root", tmp_path) == 2
    assert "is 32x64 (width x height)" in capsys.readouterr().err
    assert cli("cues", "import", "saliency", src, "--dataset", "folder", "--root", tmp_path, "--resize") == 0
    assert "4 already have a valid cue; converting 1" in capsys.readouterr().out
    assert load_cue(tmp_path, "saliency", keys[3], (H, W)).min() == 255
    assert cli("data", "check", "folder", tmp_path, "--cues", "saliency") == 0


def test_binary_masks_are_scaled_to_probabilities(tmp_path):
    keys = folder_dataset(tmp_path)
    src = tmp_path / "masks"
    src.mkdir()
    for key in keys:
        mask = np.zeros((H, W), np.uint8)
        mask[40:80, 20:44] = 1
        Image.fromarray(mask).save(src / f"{Path(key).name}.png")
    assert cli("cues", "import", "mask", src, "--dataset", "folder", "--root", tmp_path) == 0
    mask = load_cue(tmp_path, "mask", keys[0], (H, W))
    assert mask[60, 30] == 255 and mask[10, 10] == 0


# --- resume after a killed run, and a made cue feeding a GASM cell ----------------------------------


@pytest.mark.slow
def test_a_killed_make_resumes_where_it_stopped(tmp_path):
    root = tmp_path / "data"
    assert reidbench("data", "synth", "market1501", root, "--ids", 4, cwd=tmp_path).returncode == 0
    made = root / "cues" / "mask"
    for old in made.rglob("*.png"):
        old.unlink()
    args = [
        "cues",
        "make",
        "mask",
        "--dataset",
        "market1501",
        "--root",
        root,
        "--random-weights",
        "--size",
        32,
        "--batch-size",
        1,
        "--workers",
        0,
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *map(str, args)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: len(list(made.rglob("*.png"))) >= 5, "the first masks", timeout=600, every=0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = len(list(made.rglob("[!.]*.png")))
    assert 5 <= done < 77
    victim = next(made.rglob("[!.]*.png"))
    victim.write_bytes(victim.read_bytes()[:20])  # a file cut short by hand is made again
    rerun = reidbench(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done - 1} already have a valid cue; {77 - done + 1} to make" in rerun.stdout
    check = reidbench("data", "check", "market1501", root, "--cues", "mask", cwd=tmp_path)
    assert check.returncode == 0 and "no problems" in check.stdout, check.stdout


@pytest.mark.slow
def test_a_made_mask_feeds_a_gasm_cell_through_reidbench_run(tmp_path):
    root = tmp_path / "data"
    assert reidbench("data", "synth", "market1501", root, "--ids", 8, cwd=tmp_path).returncode == 0
    for old in (root / "cues" / "mask").rglob("*.png"):
        old.unlink()
    made = reidbench(
        "cues",
        "make",
        "mask",
        "--dataset",
        "market1501",
        "--root",
        root,
        "--random-weights",
        "--size",
        32,
        "--batch-size",
        16,
        "--workers",
        0,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    spec = write_spec(
        tmp_path,
        "gasm-made-mask",
        grid={"methods": ["gasm:mask"]},
        train={"iterations": 4, "lr": 1e-3, "warmup": 1, "milestones": [3]},
        datasets={"market1501": {"root": str(root)}},
    )
    run = reidbench("run", spec, "--store", "store", cwd=tmp_path, env=cache_env(tmp_path))
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    from harness.store import Store

    rows = Store(tmp_path / "store").read().rows
    assert {(r["method"], r["variant"], r["synthetic"]) for r in rows} == {("gasm", "mask", False)}
    assert all(0.0 < r["mAP"] <= 1.0 for r in rows)


def test_weights_fetch_knows_the_cue_models_and_make_reads_them_from_the_cache(tmp_path, monkeypatch, capsys):
    import dataclasses

    from torchvision.models.segmentation import deeplabv3_resnet50

    from harness.cue_tools import models
    from harness.cue_tools.models import person_probability
    from methods.weights import WeightsFile

    root = tmp_path / "data"
    keys = folder_dataset(root)
    torch.manual_seed(1)
    net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).eval()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    torch.save(net.state_dict(), mirror / "deeplabv3-test.pth")
    model = dataclasses.replace(
        models.MODELS["deeplabv3-coco"], weights=WeightsFile("https://invalid/deeplabv3-test.pth")
    )
    monkeypatch.setitem(models.MODELS, "deeplabv3-coco", model)
    monkeypatch.setitem(models.MODEL_FOR, "mask", model)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cli("weights", "fetch", "deeplabv3-coco", "--from", mirror.as_uri()) == 0
    assert (tmp_path / "torch/hub/checkpoints/deeplabv3-test.pth").is_file()
    assert cli("weights", "list") == 0
    assert any(line.split()[:2] == ["deeplabv3-coco", "yes"] for line in capsys.readouterr().out.splitlines())
    assert cli("cues", "make", "mask", "--dataset", "folder", "--root", root, "--size", 64, "--workers", 0) == 0
    image = torch.from_numpy(np.array(Image.open(root / f"{keys[0]}.png").convert("RGB"))).permute(2, 0, 1)
    with torch.no_grad():
        expected = (person_probability(net, image[None], 64)[0] * 255).round().numpy()
    assert np.abs(load_cue(root, "mask", keys[0], (H, W)).astype(float) - expected).max() <= 1
