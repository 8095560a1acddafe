"""CUHK01's published layout (Li et al., ACCV 2012): 971 persons, two images in each of two cameras.

``campus/0001001.png``: the first 4 digits are the person id, the last 3 the image index 001-004;
001-002 come from camera A (camid 0), 003-004 from camera B (camid 1). The 485/486 protocol trains
on 485 randomly chosen persons and tests on the other 486: queries from camera A, gallery from
camera B. The split is drawn from `split_seed` (0 for the registered ``cuhk01``), so every run
uses the same split; other seeds give the further random splits.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from harness.data.files import Items, parse_names, require_dir
from harness.errors import UserError

FOLDER = "campus"
_NAME = re.compile(r"^(\d{4})(\d{3})\.png$")
TRAIN_IDS, TEST_IDS = 485, 486


def _parse(match: re.Match) -> tuple[int, int] | None:
    index = int(match.group(2))
    return (int(match.group(1)), (index - 1) // 2) if 1 <= index <= 4 else None


def read(root: Path, split_seed: int = 0) -> tuple[Items, Items, Items]:
    folder = require_dir(root / FOLDER, "CUHK01", f"the folder {FOLDER}")
    items = parse_names(
        folder, _NAME, _parse, dataset="CUHK01", example="0001001.png (4-digit pid, image 001-004)", suffixes=(".png",)
    )
    pids = np.asarray(sorted({pid for _, pid, _ in items}))
    if len(pids) < 2:
        raise UserError(f"CUHK01 layout: {folder} holds images of {len(pids)} person(s); a split needs at least 2.")
    # The published split is 485/486 of 971; smaller (synthetic) sets keep that proportion.
    n_train = TRAIN_IDS if len(pids) == TRAIN_IDS + TEST_IDS else len(pids) // 2
    train_ids = set(np.random.default_rng(split_seed).permutation(pids)[:n_train].tolist())
    train = [item for item in items if item[1] in train_ids]
    test = [item for item in items if item[1] not in train_ids]
    return train, [i for i in test if i[2] == 0], [i for i in test if i[2] == 1]
