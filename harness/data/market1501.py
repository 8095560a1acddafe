"""Market-1501's published layout (Zheng et al., ICCV 2015).

``Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/0002_c1s1_000451_03.jpg``:
person id, camera, sequence, frame, box. In the gallery, pid -1 marks junk boxes (dropped: they
never count) and pid 0 distractors (kept: they count as wrong matches).
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import UserError

FOLDER = "Market-1501-v15.09.15"
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
_NAME = re.compile(r"^(-1|\d{4})_c(\d)s\d_\d{6}_\d{2}\.jpg$")

Items = list[tuple[Path, int, int]]


def read(root: Path) -> tuple[Items, Items, Items]:
    """Train, query and gallery as (path, pid, camid) with camid counted from 0."""
    base = root / FOLDER
    if not base.is_dir():
        raise UserError(
            f"Market-1501 not found: expected the folder {base} (the archive's top folder) inside "
            f"the dataset root {root}. Point [datasets.market1501] root at the folder that holds it."
        )
    missing = [split for split in SPLITS if not (base / split).is_dir()]
    if missing:
        raise UserError(
            f"Market-1501 layout: missing folder(s) {', '.join(missing)} in {base} (expected {', '.join(SPLITS)})."
        )
    train, query, gallery = (_read_split(base / split) for split in SPLITS)
    train = [item for item in train if item[1] > 0]
    query = [item for item in query if item[1] > 0]
    gallery = [item for item in gallery if item[1] != -1]
    return train, query, gallery


def _read_split(folder: Path) -> Items:
    items, bad = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".jpg":
            continue  # Market ships Thumbs.db files beside the images
        match = _NAME.match(path.name)
        if match is None or not 1 <= int(match.group(2)) <= 6:
            bad.append(path.name)
            continue
        items.append((path, int(match.group(1)), int(match.group(2)) - 1))
    if bad:
        raise UserError(
            f"Market-1501 layout: {len(bad)} file(s) in {folder} are not named like "
            f"0002_c1s1_000451_03.jpg (pid_cCAMsSEQ_FRAME_BOX, camera 1-6), e.g. {bad[0]!r}."
        )
    if not items:
        raise UserError(f"Market-1501 layout: {folder} holds no .jpg images.")
    return items
