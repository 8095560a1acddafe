"""Synthetic copies of the six sets SPReID only trains on, in their published layouts (see each
reader in harness/data for the layout and its source). All their images are training data; the
renderer's identities are the readers' identities, so a union of them trains like the real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from harness.data import prid, psdb
from harness.data.cues import write_cues
from harness.data.synthetic.render import HEIGHT, JPEG_QUALITY, WIDTH, Scene, save

_ANGLES = (0, 45, 90, 135, 180)


def _cameras(rng: np.random.Generator, cameras: int, low: int, high: int) -> np.ndarray:
    return np.sort(rng.choice(cameras, int(rng.integers(low, high + 1)), replace=False))


def write_viper(root: Path, *, ids: int, seed: int) -> Path:
    """One image per person in each camera, ``VIPeR/cam_{a,b}/NNN_ANGLE.bmp``."""
    scene, rng = Scene(seed, 2), np.random.default_rng((seed, 0))
    for pid in range(ids):
        for cam, folder in enumerate(("cam_a", "cam_b")):
            (r,) = scene.shots(pid, cam, 1)
            save(r, root, f"VIPeR/{folder}/{pid:03d}_{_ANGLES[int(rng.integers(len(_ANGLES)))]}.bmp")
    return root / "VIPeR"


def write_prid(root: Path, *, ids: int, seed: int) -> Path:
    """``single_shot/cam_{a,b}/person_NNNN.png``: half the persons (at most 200) in both cameras,
    numbered from 1; the rest split between camera A only and camera B only in the release's
    proportion (185 : 549), numbered from 201 in each, as in the release (the same number above
    200 is a different person in A and in B). At 934 persons it has the release's counts."""
    scene = Scene(seed, 2)
    shared = min(prid.SHARED, ids // 2)
    a_only = round((ids - shared) * 185 / (185 + 549))
    people = [(n, (0, 1)) for n in range(1, shared + 1)]
    people += [(prid.SHARED + k, (0,)) for k in range(1, a_only + 1)]
    people += [(prid.SHARED + k, (1,)) for k in range(1, ids - shared - a_only + 1)]
    for number, cams in people:
        for cam in cams:
            (r,) = scene.shots(prid.pid_of(number, cam), cam, 1)
            save(r, root, f"single_shot/{('cam_a', 'cam_b')[cam]}/person_{number:04d}.png")
    return root / "single_shot"


def write_3dpes(root: Path, *, ids: int, seed: int) -> Path:
    """2-3 views per person out of 8 cameras, 2-3 snapshots each: ``3DPeS/RGB/PID_VIEW_NNNN.bmp``."""
    scene, rng = Scene(seed, 8), np.random.default_rng((seed, 0))
    for pid in range(1, ids + 1):
        for cam in _cameras(rng, 8, 2, 3):
            for k, r in enumerate(scene.shots(pid, int(cam), int(rng.integers(2, 4)))):
                save(r, root, f"3DPeS/RGB/{pid}_{int(cam) + 1}_{k:04d}.bmp")
    return root / "3DPeS"


def write_shinpuhkan(root: Path, *, ids: int, seed: int) -> Path:
    """4-6 of 16 cameras per person (the real set has all 16), 2-3 images each:
    ``Shinpuhkan2014dataset/images/PPP_CC_NNNN.jpg``."""
    scene, rng = Scene(seed, 16), np.random.default_rng((seed, 0))
    for pid in range(1, ids + 1):
        for cam in _cameras(rng, 16, 4, 6):
            for k, r in enumerate(scene.shots(pid, int(cam), int(rng.integers(2, 4)))):
                save(r, root, f"Shinpuhkan2014dataset/images/{pid:03d}_{int(cam) + 1:02d}_{k:04d}.jpg")
    return root / "Shinpuhkan2014dataset"


def write_cuhk02(root: Path, *, ids: int, seed: int) -> Path:
    """Persons dealt round-robin to the 5 camera pairs, numbered from 1 in each pair, two images per
    camera: ``Dataset/P{1..5}/cam{1,2}/NNNN_K.png``."""
    scene = Scene(seed, 10)
    for index in range(ids):
        pair, number = index % 5, index // 5 + 1
        for cam in range(2):
            for k, r in enumerate(scene.shots(index, 2 * pair + cam, 2)):
                save(r, root, f"Dataset/P{pair + 1}/cam{cam + 1}/{number:04d}_{2 * cam + k + 1}.png")
    return root / "Dataset"


def write_psdb(root: Path, *, ids: int, seed: int) -> Path:
    """Scenes of up to three persons side by side on a plain street, and ``Train.mat`` naming half
    of the persons (the others appear in scenes but are not training persons, as in the release).
    Each box is exactly a rendered person, so the cut crops carry the renderer's exact cues."""
    scene, rng = Scene(seed, 4), np.random.default_rng((seed, 0))
    train = set(rng.permutation(ids)[: max(1, ids // 2)].tolist())
    shots = [
        (index, r)
        for index in range(ids)
        for cam in _cameras(rng, 4, 1, 2)
        for r in scene.shots(index, int(cam), int(rng.integers(1, 3)))
    ]
    order = rng.permutation(len(shots))
    appearances: dict[int, list[tuple[str, list[int]]]] = {}
    base = root / psdb.FOLDERS[0]
    (base / psdb.IMAGES).mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(order), 3), 1):
        imname = f"s{number}.jpg"
        canvas = np.full((HEIGHT + 32, 3 * WIDTH + 16, 3), 120, np.uint8)
        for slot, k in enumerate(order[start : start + 3]):
            index, r = shots[k]
            x, y = 8 + slot * WIDTH, int(rng.integers(0, 32))
            canvas[y : y + HEIGHT, x : x + WIDTH] = r.image
            appearances.setdefault(index, []).append((imname, [x, y, WIDTH, HEIGHT]))
            if index in train:
                count = len(appearances[index])
                write_cues(root, f"{psdb.CUE_FOLDER}/{psdb.crop_name(_idname(index), count, imname)}", r)
        Image.fromarray(canvas).save(base / psdb.IMAGES / imname, quality=JPEG_QUALITY)
    _write_train_mat(base / psdb.TRAIN, [(_idname(i), appearances[i]) for i in sorted(train) if i in appearances])
    return base


def _idname(index: int) -> str:
    return f"p{index + 1:05d}"


def _write_train_mat(path: Path, persons: list[tuple[str, list[tuple[str, list[int]]]]]) -> None:
    """``Train`` as MATLAB writes it: a (persons, 1) cell of 1x1 structs, ``scene`` a 1xN struct array."""
    scene_type = [("imname", object), ("idlocate", object), ("ishard", object)]
    person_type = [("idname", object), ("nAppear", object), ("scene", object)]
    cell = np.empty((len(persons), 1), dtype=object)
    for i, (idname, seen) in enumerate(persons):
        scenes = np.empty((1, len(seen)), dtype=scene_type)
        for j, (imname, box) in enumerate(seen):
            scenes[0, j] = (np.asarray([imname]), np.asarray([box], np.float64), np.asarray([[0]], np.uint8))
        person = np.empty((1, 1), dtype=person_type)
        person[0, 0] = (np.asarray([idname]), np.asarray([[len(seen)]], np.float64), scenes)
        cell[i, 0] = person
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"Train": cell})
    with open(path, "r+b") as f:  # scipy stamps the creation time into the header; same seed, same bytes
        f.write(b"MATLAB 5.0 MAT-file Platform: posix, Created on: Thu Jan  1 00:00:00 1970".ljust(116))
