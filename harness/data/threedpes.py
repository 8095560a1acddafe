"""3DPeS's re-identification snapshots (Baltieri et al., ACM J-HGBU 2011): 193 persons, 1,012 images.

``3DPeS/RGB/<pid>_<view>_<rest>.bmp``, as 3DPeS_ReId_Snap.zip unpacks (DGD's ``format_3dpes.py``
reads ``<dir>/RGB/*.bmp`` and splits each name on ``_`` into person and view; the view is the
camera's sequence the snapshot comes from, kept as the camid). SPReID trains on 3DPeS and never
tests on it, and it has no official split, so every image is training data.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.data.files import Items, parse_names, require_dir

FOLDER = "3DPeS"
_NAME = re.compile(r"^(\d+)_(\d+)(_[^/]*)?\.bmp$", re.I)


def read(root: Path) -> tuple[Items, Items, Items]:
    folder = require_dir(root / FOLDER / "RGB", "3DPeS", f"the folder {FOLDER}/RGB (from 3DPeS_ReId_Snap.zip)")
    train = parse_names(
        folder,
        _NAME,
        lambda m: (int(m.group(1)), int(m.group(2))),
        dataset="3DPeS",
        example="1_2_0043.bmp (person_view_anything)",
        suffixes=(".bmp",),
    )
    return train, [], []
