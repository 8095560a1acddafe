"""Occluded-REID's published layout (Zhuo et al., ICME 2018): a test-only set of 200 persons.

``Occluded_REID/{occluded_body_images,whole_body_images}/001/001_01.tif``: 5 occluded and 5
whole-body images per person. Queries are the occluded images, the gallery the whole-body ones; there
is no train split. An image's camid is its index within its person (``001_03`` -> 3), as FastReID's
OccludedREID loader has it (projects/PartialReID/partialreid/partial_dataset.py, by GASM's first
author: ``pattern = re.compile(r'([-\\d]+)_(\\d*)')``, ``pid, camid = ...groups()``), so with the
protocol's same-camera rule the whole-body image that shares the occluded query's index is left
out of its ranking, as FastReID's evaluate_rank leaves it out, and each query has 4 true matches.
GASM's Occluded-REID numbers come from that toolkit ("thanks to FastReID ... codebase for GASM").
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
    for split in SPLITS:
        folder = require_dir(base / split, "Occluded-REID", f"the folder {split}")
        items = parse_names(
            folder,
            _NAME,
            lambda m: (int(m.group(1)), int(m.group(2))),
            dataset="Occluded-REID",
            example="001/001_01.tif (pid folder, pid_index)",
            suffixes=(".tif", ".tiff", ".jpg", ".png"),
            recursive=True,
        )
        splits.append(items)
    return [], splits[0], splits[1]
