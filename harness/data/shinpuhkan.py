"""Shinpuhkan2014 (Kawanishi et al., FCV 2014): 24 persons, each seen by all 16 cameras.

``Shinpuhkan2014dataset/images/001_01_<rest>.jpg``: a 3-digit person number, then a 2-digit camera
number, both from 1 (DGD's ``format_shinpuhkan.py`` reads ``name[0:3]`` and ``name[4:6]`` from
``<dir>/images/*.jpg``). It is a training-only set: DGD and SPReID use all of it for training.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.data.files import Items, parse_names, require_dir

FOLDER = "Shinpuhkan2014dataset"
_NAME = re.compile(r"^(\d{3})_(\d{2})(?:\D.*)?\.jpg$", re.I)


def _parse(match: re.Match) -> tuple[int, int] | None:
    pid, cam = int(match.group(1)), int(match.group(2))
    return (pid, cam - 1) if pid >= 1 and cam >= 1 else None


def read(root: Path) -> tuple[Items, Items, Items]:
    folder = require_dir(root / FOLDER / "images", "Shinpuhkan", f"the folder {FOLDER}/images")
    train = parse_names(
        folder,
        _NAME,
        _parse,
        dataset="Shinpuhkan",
        example="001_01_anything.jpg (3-digit person, 2-digit camera, from 1)",
        suffixes=(".jpg",),
    )
    return train, [], []
