"""Occluded-REID's published layout (Zhuo et al., ICME 2018): a test-only set of 200 persons.

``Occluded_REID/{occluded_body_images,whole_body_images}/001/001_01.tif``: 5 occluded and 5
whole-body images per person. Queries are the occluded images (camid 0), the gallery the whole-body
ones (camid 1), so every query has its true matches in the other "camera"; there is no train split.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.data.files import Items, parse_names, require_dir

FOLDER = "Occluded_REID"
SPLITS = ("occluded_body_images", "whole_body_images")
_NAME = re.compile(r"^(\d{3})_(\d{2})\.(tif|tiff|jpg|png)$", re.I)


def read(root: Path) -> tuple[Items, Items, Items]:
    base = require_dir(root / FOLDER, "Occluded-REID", f"the folder {FOLDER}")
    splits = []
    for camid, split in enumerate(SPLITS):
        folder = require_dir(base / split, "Occluded-REID", f"the folder {split}")
        items = parse_names(folder, _NAME, lambda m, c=camid: (int(m.group(1)), c), dataset="Occluded-REID",
                            example="001/001_01.tif (pid folder, pid_index)", suffixes=(".tif", ".tiff", ".jpg", ".png"),
                            recursive=True)
        splits.append(items)
    return [], splits[0], splits[1]
