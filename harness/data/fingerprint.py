"""Which copy of a dataset a result was measured on: a fingerprint per split.

Numbers are lost to a wrong copy of a dataset (MSMT17 V1 instead of V2, a re-downloaded Market
with a few files missing), so every result row records the fingerprint of its test set and of its
training sets, and the report refuses to average seeds measured on different copies. A split's
fingerprint is a hash of its sorted (path relative to the dataset root, file size) pairs: cheap
(one stat per image, no reading) and blind to where the dataset lies. MSMT17 also names its version.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from harness.data import ReidData
from harness.data.msmt17 import VERSIONS

_SPLITS = ("train", "query", "gallery")


def split_hash(paths: list[str], root: Path) -> str:
    """16 hex digits over the sorted (relative path, size) pairs of one split's images."""
    digest = hashlib.sha256()
    for relative, size in sorted((_relative(p, root), os.stat(p).st_size) for p in dict.fromkeys(paths)):
        digest.update(f"{relative}\t{size}\n".encode())
    return digest.hexdigest()[:16]


def fingerprint(data: ReidData, root: str | Path, splits: tuple[str, ...] = _SPLITS) -> dict[str, str]:
    """{split: hash} for the splits asked (those with images), plus "version" for MSMT17 (V1 or V2)."""
    root = Path(root)
    out = {split: split_hash([s.path for s in getattr(data, split)], root) for split in splits if getattr(data, split)}
    if data.name == "msmt17":
        out["version"] = next((name.removeprefix("MSMT17_") for name in VERSIONS if (root / name).is_dir()), "unknown")
    return out


def as_json(fingerprints: dict) -> str:
    return json.dumps(fingerprints, sort_keys=True, separators=(",", ":"))


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()
