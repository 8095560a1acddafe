"""PRID 2011's single-shot images (Hirzer et al., SCIA 2011): two cameras, 385 and 749 persons.

``single_shot/{cam_a,cam_b}/person_0001.png`` directly under the root (the release's zip,
prid_2011.zip, has no top folder; DGD's ``format_prid.py`` reads ``<prid_dir>/single_shot``). The
release's readme: persons 0001-0200 appear in both cameras (person_0001 of A is person_0001 of B);
the others appear in one camera only and are different people. So A's 0001-0385 keep their number,
B's 0001-0200 share A's, and B's 0201-0749 become 1201-1749: 934 identities, 1,134 images.
SPReID trains on PRID and never tests on it, so every single-shot image is training data.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.data.files import Items, parse_names, require_dir

FOLDER = "single_shot"
CAMERAS = ("cam_a", "cam_b")
SHARED = 200  # persons 1..200 appear in both cameras
B_ONLY_OFFSET = 1000  # camera B's persons above SHARED are people of their own
_NAME = re.compile(r"^person_(\d{4})\.png$", re.I)


def pid_of(number: int, camid: int) -> int:
    return number + B_ONLY_OFFSET if camid == 1 and number > SHARED else number


def read(root: Path) -> tuple[Items, Items, Items]:
    base = require_dir(root / FOLDER, "PRID 2011", f"the folder {FOLDER} (from prid_2011.zip)")
    train: Items = []
    for camid, camera in enumerate(CAMERAS):
        folder = require_dir(base / camera, "PRID 2011", f"the folder {FOLDER}/{camera}")
        train += parse_names(
            folder,
            _NAME,
            lambda m, c=camid: (pid_of(int(m.group(1)), c), c),
            dataset="PRID 2011",
            example="person_0001.png",
            suffixes=(".png",),
        )
    return train, [], []
