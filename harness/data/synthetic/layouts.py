"""Synthetic copies of every published layout, with exact cue maps, from the renderer in render.py.

Each writer reproduces its dataset's folder names, file names and file formats (JPEG, PNG, TIFF,
MATLAB v7.3 and v5 .mat files, list files) at a small size: `ids` persons (tens by default, up to
the published counts for load tests), 64x128 crops. Identities, cameras and shots come from the
renderer's seeded streams, so the same (layout, ids, seed) gives byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.data import lip
from harness.data.synthetic.cuhk03 import write_cuhk03
from harness.data.synthetic.market1501 import write_market1501 as _write_market1501
from harness.data.synthetic.render import JPEG_QUALITY, Scene, save
from harness.data.synthetic.spreid_sets import (
    write_3dpes,
    write_cuhk02,
    write_prid,
    write_psdb,
    write_shinpuhkan,
    write_viper,
)
from harness.errors import UserError, closest


def _split_ids(rng: np.random.Generator, ids: int) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(ids)
    return np.sort(order[: ids // 2]), np.sort(order[ids // 2 :])


def _cameras_of(rng: np.random.Generator, cameras: int, low: int, high: int) -> np.ndarray:
    return np.sort(rng.choice(cameras, int(rng.integers(low, high + 1)), replace=False))


def write_market1501(root: Path, *, ids: int, seed: int) -> Path:
    return _write_market1501(root, ids=ids, seed=seed)


def write_dukemtmc(root: Path, *, ids: int, seed: int) -> Path:
    """Half the persons train, half test (one query per camera), plus gallery-only distractors."""
    scene, rng = Scene(seed, 8), np.random.default_rng((seed, 0))
    train, test = _split_ids(rng, ids)
    distractors = range(ids, ids + max(1, ids // 4))
    frame = 0
    for index in range(ids + len(distractors)):
        pid = 1 + 2 * index  # Duke's pids are sparse
        for cam in _cameras_of(rng, 8, 1 if index >= ids else 2, 4):
            for k, r in enumerate(scene.shots(pid, int(cam), int(rng.integers(2, 5)))):
                frame += int(rng.integers(10, 500))
                split = (
                    "bounding_box_train"
                    if index in train
                    else ("query" if k == 0 and index in test else "bounding_box_test")
                )
                save(r, root, f"DukeMTMC-reID/{split}/{pid:04d}_c{cam + 1}_f{frame:07d}.jpg")
    return root / "DukeMTMC-reID"


def write_cuhk01(root: Path, *, ids: int, seed: int) -> Path:
    """Four images per person: 001-002 in camera A, 003-004 in camera B."""
    scene = Scene(seed, 2)
    for pid in range(1, ids + 1):
        for cam in range(2):
            for k, r in enumerate(scene.shots(pid, cam, 2)):
                save(r, root, f"campus/{pid:04d}{2 * cam + k + 1:03d}.png")
    return root / "campus"


def write_msmt17(root: Path, *, ids: int, seed: int, version: int = 1) -> Path:
    """Train persons 0.. and test persons 0.. (MSMT restarts its test ids), 15 cameras, list files."""
    folder, (train_dir, test_dir) = (
        ("MSMT17_V1", ("train", "test")) if version == 1 else ("MSMT17_V2", ("mask_train_v2", "mask_test_v2"))
    )
    scene, rng = Scene(seed, 15), np.random.default_rng((seed, 0))
    n_train, frame = ids // 2, 0
    lists: dict[str, list[str]] = {name: [] for name in ("train", "val", "query", "gallery")}
    for index in range(ids):
        is_train = index < n_train
        pid = index if is_train else index - n_train
        for cam in _cameras_of(rng, 15, 2, 4):
            for k, r in enumerate(scene.shots(1000 + index, int(cam), int(rng.integers(2, 5)))):
                frame += 1
                rel = f"{pid:04d}/{pid:04d}_{k:03d}_{cam + 1:02d}_0303morning_{frame:04d}_{k}.jpg"
                save(r, root, f"{folder}/{train_dir if is_train else test_dir}/{rel}")
                name = ("val" if rng.random() < 0.07 else "train") if is_train else ("query" if k == 0 else "gallery")
                lists[name].append(f"{rel} {pid}\n")
    for name, lines in lists.items():
        (root / folder / f"list_{name}.txt").write_text("".join(lines))
    return root / folder


def write_msmt17_v2(root: Path, *, ids: int, seed: int) -> Path:
    return write_msmt17(root, ids=ids, seed=seed, version=2)


def write_occluded_reid(root: Path, *, ids: int, seed: int) -> Path:
    """Five occluded and five whole-body TIFF images per person."""
    scene = Scene(seed, 2)
    for pid in range(1, ids + 1):
        for cam, (split, occlusion) in enumerate((("occluded_body_images", 1.0), ("whole_body_images", 0.0))):
            for k, r in enumerate(scene.shots(pid, cam, 5, occlusion=occlusion, heavy=True)):
                save(r, root, f"Occluded_REID/{split}/{pid:03d}/{pid:03d}_{k + 1:02d}.tif")
    return root / "Occluded_REID"


def write_folder(root: Path, *, ids: int, seed: int) -> Path:
    """The generic layout: train/, query/ (one image per person and camera), gallery/."""
    scene, rng = Scene(seed, 4), np.random.default_rng((seed, 0))
    train, _ = _split_ids(rng, ids)
    for pid in range(1, ids + 1):
        for cam in _cameras_of(rng, 4, 2, 3):
            for k, r in enumerate(scene.shots(pid, int(cam), 3)):
                split = "train" if pid - 1 in train else ("query" if k == 0 else "gallery")
                save(r, root, f"{split}/{pid:04d}_c{cam + 1}_{k:02d}.jpg")
    return root


def write_lip(root: Path, *, n: int, seed: int) -> Path:
    """LIP's layout (harness.data.lip): `n` single-person images, a fifth of them (at least one) for
    validation, with the renderer's exact LIP labels as the annotations. Each crop is rescaled by
    0.75-1.5 (labels by nearest neighbour), as LIP's images come in many sizes."""
    from PIL import Image

    scene, rng = Scene(seed, 4), np.random.default_rng((seed, 0))
    val = set(rng.choice(n, max(1, n // 5), replace=False).tolist())
    ids: dict[str, list[str]] = {"train": [], "val": []}
    for k in range(n):
        split = "val" if k in val else "train"
        (r,) = scene.shots(k, int(rng.integers(4)), 1)
        scale = float(rng.uniform(0.75, 1.5))
        size = (round(r.image.shape[1] * scale), round(r.image.shape[0] * scale))
        name = f"{100 + k}_{int(rng.integers(100000, 1000000))}"
        for folder, array, resample, suffix in (
            (f"{lip.IMAGES}/{split}_images", r.image, Image.BILINEAR, ".jpg"),
            (f"{lip.ANNOTATIONS}/{split}_segmentations", r.lip, Image.NEAREST, ".png"),
        ):
            path = root / folder / f"{name}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(array).resize(size, resample)
            picture.save(path, **({"quality": JPEG_QUALITY} if suffix == ".jpg" else {}))
        ids[split].append(name)
    for split, names in ids.items():
        (root / lip.IMAGES / f"{split}_id.txt").write_text("".join(f"{name}\n" for name in names))
    (root / "reidbench-synthetic.txt").write_text(
        "A synthetic stand-in in LIP's layout, written by reidbench; not LIP.\n"
    )
    return root


def _write_lip(root: Path, *, ids: int, seed: int) -> Path:
    return write_lip(root, n=ids, seed=seed)


def _write_cuhk03(root: Path, *, ids: int, seed: int) -> Path:
    return write_cuhk03(root, ids=ids, seed=seed)


LAYOUTS: dict[str, Callable[..., Path]] = {
    "market1501": write_market1501,
    "dukemtmc": write_dukemtmc,
    "cuhk03": _write_cuhk03,
    "cuhk01": write_cuhk01,
    "msmt17": write_msmt17,
    "msmt17-v2": write_msmt17_v2,
    "occluded-reid": write_occluded_reid,
    "folder": write_folder,
    "lip": _write_lip,  # human parsing, not re-ID: `ids` is its number of images
    # SPReID's training-only sets (harness/data/synthetic/spreid_sets.py)
    "3dpes": write_3dpes,
    "cuhk02": write_cuhk02,
    "prid": write_prid,
    "psdb": write_psdb,
    "shinpuhkan": write_shinpuhkan,
    "viper": write_viper,
}


_MAX_IDS = {
    "market1501": 1501,
    "dukemtmc": 3999,
    "cuhk01": 9999,
    "occluded-reid": 999,
    "folder": 9999,
    "viper": 1000,
    "prid": 2000,
    "shinpuhkan": 999,
    "cuhk02": 49995,
    "psdb": 99999,
}


def write_layout(layout: str, root: Path | str, *, ids: int, seed: int) -> Path:
    """Write the synthetic `layout` under `root`; returns the dataset's top folder."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown synthetic layout {layout!r}; {closest(layout, LAYOUTS)}")
    if ids < 4:
        raise UserError(
            f"{ids} persons asked for (--ids, or [synthetic] ids in a spec): a synthetic dataset needs at least 4."
        )
    if ids > _MAX_IDS.get(layout, ids):
        raise UserError(
            f"{ids} persons asked for (--ids, or [synthetic] ids in a spec): {layout}'s file names number at most "
            f"{_MAX_IDS[layout]}."
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return LAYOUTS[layout](root, ids=ids, seed=seed)
