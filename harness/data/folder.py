"""A generic layout for test-only sets (e.g. Crowd-REID) and for anything converted by hand.

``<root>/{train,query,gallery}/PID_cCAM_ANYTHING.{jpg,png}``: pid a non-negative integer (0 marks a
distractor, -1 junk that is dropped), camera a positive integer. ``train/`` is optional. It is
evaluated like Market-1501: same-camera true matches do not count.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.data.files import Items, parse_names, require_dir

_NAME = re.compile(r"^(-1|\d+)_c(\d+)(_.*)?\.(jpg|jpeg|png)$", re.I)
_EXAMPLE = "0001_c1_x.jpg (PID_cCAM_ANYTHING, camera from 1)"


def _parse(match: re.Match) -> tuple[int, int] | None:
    cam = int(match.group(2))
    return (int(match.group(1)), cam - 1) if cam >= 1 else None


def _split(folder: Path) -> Items:
    return parse_names(folder, _NAME, _parse, dataset="folder", example=_EXAMPLE, suffixes=(".jpg", ".jpeg", ".png"))


def read(root: Path) -> tuple[Items, Items, Items]:
    query = _split(require_dir(root / "query", "folder dataset", "a query/ folder"))
    gallery = _split(require_dir(root / "gallery", "folder dataset", "a gallery/ folder"))
    train = _split(root / "train") if (root / "train").is_dir() else []
    return ([i for i in train if i[1] > 0], [i for i in query if i[1] > 0], [i for i in gallery if i[1] != -1])
