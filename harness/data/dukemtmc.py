"""DukeMTMC-reID's published layout (Zheng et al., ICCV 2017).

``DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}/0005_c2_f0046985.jpg``: person id,
camera 1-8, frame. Gallery-only identities are distractors and stay in the gallery.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.data.files import Items, parse_names, require_dir

FOLDER = "DukeMTMC-reID"
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
_NAME = re.compile(r"^(\d{4})_c(\d)_f(\d{7})\.jpg$")


def _parse(match: re.Match) -> tuple[int, int] | None:
    cam = int(match.group(2))
    return (int(match.group(1)), cam - 1) if 1 <= cam <= 8 else None


def read(root: Path) -> tuple[Items, Items, Items]:
    base = require_dir(root / FOLDER, "DukeMTMC-reID", f"the folder {FOLDER}")
    return tuple(
        parse_names(
            require_dir(base / split, "DukeMTMC-reID", f"the split folder {split}"),
            _NAME,
            _parse,
            dataset="DukeMTMC-reID",
            example="0005_c2_f0046985.jpg (pid_cCAM_fFRAME, camera 1-8)",
            suffixes=(".jpg",),
        )
        for split in SPLITS
    )
