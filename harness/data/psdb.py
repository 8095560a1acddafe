"""PSDB, the CUHK-SYSU person-search set (Xiao et al., CVPR 2017), cropped to its training persons.

The release is whole scene images with boxes, not crops:

    dataset/Image/SSM/s1.jpg                              18,184 scene images
    dataset/annotation/test/train_test/Train.mat          the training persons

(the zip unpacks to ``dataset/``; a root holding ``CUHK-SYSU/`` instead is read the same way).
``Train.mat`` holds ``Train``, a (5532, 1) cell of structs ``idname`` ('p00001'), ``nAppear`` and
``scene``, a (1, nAppear) struct array of ``imname`` ('s1.jpg'), ``idlocate`` ([x, y, w, h] in
pixels) and ``ishard`` (the structure person-search readers parse with scipy, e.g. OIM's and
SeqNet's ``cuhk_sysu.py``). SPReID uses PSDB only to train, "cropped to persons": every box of every
training person becomes one image, identity = the idname's number, camid 0 (street and movie
snaps have no cameras). The crops are cut once into ``<root>/psdb-cropped/`` as PNG, or into the
cache when the root is not writable; their cue maps are filed under ``cues/<cue>/psdb-crops/``.
The test protocol (TestG50 and friends) is person search in whole scenes, not re-ID: not read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.files import Items, extraction_dir, make_once
from harness.errors import UserError

FOLDERS = ("dataset", "CUHK-SYSU")
IMAGES = "Image/SSM"
TRAIN = "annotation/test/train_test/Train.mat"
CROPS = "psdb-cropped"  # the extracted crops' folder
CUE_FOLDER = "psdb-crops"  # where their cue maps are filed, below cues/<cue>/
_IDNAME = re.compile(r"^p(\d+)$")


def crop_name(idname: str, appearance: int, imname: str) -> str:
    """One crop per (person, appearance): a person can appear twice in one scene (5 training scenes do)."""
    return f"{idname}_{appearance:02d}_{Path(imname).stem}.png"


def base_of(root: Path) -> Path:
    for folder in FOLDERS:
        if (root / folder / TRAIN).is_file():
            return root / folder
    raise UserError(
        f"PSDB (CUHK-SYSU) not found: expected {' or '.join(f'{root / f / TRAIN}' for f in FOLDERS)}. "
        "Point the dataset's root at the folder that holds the release's dataset/ folder."
    )


def train_boxes(base: Path) -> list[tuple[str, int, str, tuple[float, ...]]]:
    """(idname, pid, imname, (x, y, w, h)) for every appearance of every person of Train.mat."""
    from scipy.io import loadmat

    path = base / TRAIN
    out = []
    try:
        persons = loadmat(path)["Train"].ravel()
        for person in persons:
            person = person.ravel()[0]
            idname = str(np.asarray(person["idname"]).ravel()[0])
            match = _IDNAME.match(idname)
            if match is None:
                raise UserError(f"PSDB: {path} has a person named {idname!r}; idnames look like 'p00001'.")
            for scene in np.asarray(person["scene"]).ravel():
                imname = str(np.asarray(scene["imname"]).ravel()[0])
                box = tuple(float(v) for v in np.asarray(scene["idlocate"], dtype=float).ravel())
                if len(box) != 4:
                    raise UserError(f"PSDB: {path}, person {idname}, scene {imname}: idlocate is not [x y w h].")
                out.append((idname, int(match.group(1)), imname, box))
    except (KeyError, ValueError, IndexError, TypeError, OSError) as err:
        raise UserError(
            f"PSDB: {path} is not CUHK-SYSU's Train.mat (a cell 'Train' of structs idname, nAppear, scene "
            f"with imname, idlocate, ishard): {err}"
        ) from None
    if not out:
        raise UserError(f"PSDB: {path} names no training person.")
    return out


def read(root: Path) -> tuple[Items, Items, Items]:
    base = base_of(root)
    boxes = train_boxes(base)
    names, seen = [], {}
    for idname, pid, imname, box in boxes:
        seen[idname] = seen.get(idname, 0) + 1
        names.append((crop_name(idname, seen[idname], imname), pid, imname, box))
    folder = make_once(extraction_dir(root, CROPS), lambda scratch: _cut(base, names, scratch))
    train = [(folder / name, pid, 0, f"{CUE_FOLDER}/{name}") for name, pid, _, _ in names]
    missing = [str(path) for path, *_ in train if not path.is_file()]
    if missing:
        raise UserError(
            f"PSDB: {len(missing)} crop(s) of {base / TRAIN} are not in {folder}, e.g. {missing[0]} "
            f"(the annotation changed after the crops were cut): delete {folder} to cut them again."
        )
    return train, [], []


def _cut(base: Path, names: list, out: Path) -> None:
    scenes: dict[str, Image.Image] = {}
    for name, _, imname, (x, y, w, h) in names:
        path = base / IMAGES / imname
        if imname not in scenes:
            if not path.is_file():
                raise UserError(f"PSDB: {base / TRAIN} names the scene {imname}, which is not in {base / IMAGES}.")
            scenes = {imname: Image.open(path).convert("RGB")}  # appearances are grouped by person, not scene
        scene = scenes[imname]
        left, top = max(0, round(x)), max(0, round(y))
        right, bottom = min(scene.width, round(x + w)), min(scene.height, round(y + h))
        if right - left < 2 or bottom - top < 2:
            raise UserError(
                f"PSDB: {base / TRAIN}: the box {[x, y, w, h]} of {name.split('_')[0]} lies outside "
                f"{imname} ({scene.width}x{scene.height})."
            )
        scene.crop((left, top, right, bottom)).save(out / name)
