"""MSMT17's published layouts (Wei et al., CVPR 2018), version 1 and version 2.

``MSMT17_V1/{train,test}/0000/0000_000_01_0303morning_0015_0.jpg`` or ``MSMT17_V2/{mask_train_v2,
mask_test_v2}/...`` beside ``list_{train,val,query,gallery}.txt``, whose lines are
``<relative path> <pid>``; the camera (1-15) is the third field of the file name. The published
training set is train plus val (1,041 persons, 32,621 images); query and gallery come from test.
"""

from __future__ import annotations

from pathlib import Path

from harness.data.files import Items
from harness.errors import UserError

VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def find(root: Path) -> tuple[Path, str, str]:
    for folder, (train_dir, test_dir) in VERSIONS.items():
        if (root / folder).is_dir():
            return root / folder, train_dir, test_dir
    raise UserError(f"MSMT17 not found: expected the folder MSMT17_V1 or MSMT17_V2 inside the dataset root {root}.")


def read(root: Path) -> tuple[Items, Items, Items]:
    base, train_dir, test_dir = find(root)
    missing = [name for name in LISTS if not (base / name).is_file()]
    if missing:
        raise UserError(f"MSMT17 layout: missing list file(s) {', '.join(missing)} in {base}.")
    train, val, query, gallery = (
        _read_list(base / name, base / folder)
        for name, folder in zip(LISTS, (train_dir, train_dir, test_dir, test_dir))
    )
    return train + val, query, gallery


def _read_list(list_file: Path, folder: Path) -> Items:
    items = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            rel, pid = fields[0], int(fields[1])
            cam = int(Path(rel).name.split("_")[2])
        except (IndexError, ValueError):
            raise UserError(
                f"MSMT17 layout: {list_file}, line {number}: expected '<pid>/<pid>_<seq>_<cam>_<...>.jpg <pid>', "
                f"got {line.strip()!r}."
            ) from None
        if not 1 <= cam <= 15:
            raise UserError(f"MSMT17 layout: {list_file}, line {number}: camera {cam} is outside 1-15.")
        items.append((folder / rel, pid, cam - 1))
    if not items:
        raise UserError(f"MSMT17 layout: {list_file} lists no images.")
    return items
