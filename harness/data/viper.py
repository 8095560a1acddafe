"""VIPeR's published layout (Gray et al., PETS 2007): 632 persons, one image in each of two cameras.

``VIPeR/{cam_a,cam_b}/000_45.bmp``: the person number, then the viewing angle in degrees. The
person number is the identity in both folders (fast-reid's ``viper.py`` reads the name's first
field; DGD's ``format_viper.py``, whose sets SPReID's union follows, pairs the two sorted folders,
which is the same pairing). SPReID trains on it and never tests on it, and VIPeR has no official
split (its protocol draws 316/316 at random), so every image is training data.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.data.files import Items, parse_names, require_dir

FOLDER = "VIPeR"
CAMERAS = ("cam_a", "cam_b")
_NAME = re.compile(r"^(\d+)_(\d+)\.bmp$", re.I)


def read(root: Path) -> tuple[Items, Items, Items]:
    base = require_dir(root / FOLDER, "VIPeR", f"the folder {FOLDER}")
    train: Items = []
    for camid, camera in enumerate(CAMERAS):
        folder = require_dir(base / camera, "VIPeR", f"the folder {FOLDER}/{camera}")
        train += parse_names(
            folder,
            _NAME,
            lambda m, c=camid: (int(m.group(1)), c),
            dataset="VIPeR",
            example="000_45.bmp (person number, angle)",
            suffixes=(".bmp",),
        )
    return train, [], []
