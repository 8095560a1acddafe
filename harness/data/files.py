"""Small helpers shared by the layout readers: folders that must exist, images named by a pattern."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.errors import UserError
from harness.modes import as_created_dir

# (path, pid, camid) and optionally a cue key: the path its cue maps are filed under (see cues.py).
Item = tuple
Items = list[Item]


def require_dir(folder: Path, dataset: str, what: str) -> Path:
    if not folder.is_dir():
        raise UserError(
            f"{dataset} not found: expected {what} at {folder}. Point the dataset's root at the folder that holds it."
        )
    return folder


def parse_names(
    folder: Path,
    pattern: re.Pattern,
    parse: Callable[[re.Match], tuple[int, int]],
    *,
    dataset: str,
    example: str,
    suffixes: tuple[str, ...],
    recursive: bool = False,
) -> Items:
    """Every image in `folder` as (path, pid, camid); any image named otherwise is an error naming it."""
    items, bad = [], []
    paths = sorted(folder.rglob("*") if recursive else folder.iterdir())
    for path in paths:
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue  # archives ship Thumbs.db and similar beside the images
        match = pattern.match(path.name)
        parsed = parse(match) if match else None
        if parsed is None:
            bad.append(path.name)
            continue
        items.append((path, *parsed))
    if bad:
        raise UserError(
            f"{dataset} layout: {len(bad)} file(s) in {folder} are not named like {example}, e.g. {bad[0]!r}."
        )
    if not items:
        raise UserError(f"{dataset} layout: {folder} holds no {'/'.join(suffixes)} images.")
    return items


def make_once(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, a folder that `write` fills, made once: written under a temporary name and renamed,
    so concurrent runs never see half of it; the first to finish wins, the others discard theirs."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    as_created_dir(scratch)  # mkdtemp's 0700 would keep a shared cache from the rest of the team
    try:
        write(scratch)
        os.rename(scratch, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def cache_dir() -> Path:
    """Where generated data lives: $REIDBENCH_CACHE, else ~/.cache/reidbench."""
    return Path(os.environ.get("REIDBENCH_CACHE", Path.home() / ".cache" / "reidbench"))


def extraction_dir(root: Path, name: str) -> Path:
    """Where images derived from a release (crops, frames) go: `root/name` when the root is writable,
    else the cache, keyed by the root's path, so a read-only release is never written to."""
    if os.access(root, os.W_OK):
        return root / name
    return cache_dir() / name / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
