"""CUHK02 (Li and Wang, CVPR 2013): 1,816 persons in five camera pairs, two images per camera.

``Dataset/P{1..5}/{cam1,cam2}/<pid>_<n>.png``: persons are numbered within each pair, so the
identity is (pair, number) and the camid 2 * (pair - 1) + (cam - 1), ten cameras in all
(torchreid's ``cuhk02.py`` reads the same tree and relabels per pair). P1-P5 hold 971, 306, 107,
193 and 239 persons; P1 is CUHK01. SPReID trains on CUHK02 and never tests on it, so every pair is
training data (torchreid's protocol, P1-P4 train and P5 test, is not SPReID's).
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.data.files import Items, parse_names, require_dir

FOLDER = "Dataset"
PAIRS = 5
PAIR_STRIDE = 10000  # pid = pair * PAIR_STRIDE + the person's number in the pair
_NAME = re.compile(r"^(\d+)_[^/]*\.png$", re.I)


def read(root: Path) -> tuple[Items, Items, Items]:
    base = require_dir(root / FOLDER, "CUHK02", f"the folder {FOLDER}")
    train: Items = []
    for pair in range(1, PAIRS + 1):
        for cam in (1, 2):
            folder = require_dir(base / f"P{pair}" / f"cam{cam}", "CUHK02", f"the folder {FOLDER}/P{pair}/cam{cam}")
            train += parse_names(
                folder,
                _NAME,
                lambda m, p=pair, c=cam: (p * PAIR_STRIDE + int(m.group(1)), 2 * (p - 1) + c - 1),
                dataset="CUHK02",
                example="0001_1.png (person number in the pair, then anything)",
                suffixes=(".png",),
            )
    return train, [], []
