"""Synthetic stand-ins for every dataset, in their published layouts, with exact cue maps.

`render` draws persons and their cues, `layouts` holds one writer per published layout (with
`market1501` and `cuhk03` in files of their own), and `synthetic_root` makes a copy once in the cache.
"""

from __future__ import annotations

from pathlib import Path

from harness.data import synthetic_layout
from harness.data.files import cache_dir, make_once
from harness.data.synthetic.layouts import LAYOUTS, write_layout

__all__ = ["LAYOUTS", "synthetic_root", "write_layout"]


def synthetic_root(name: str, *, ids: int, seed: int) -> Path:
    """The root of the synthetic copy of dataset `name`, generated once into the cache.

    It is written into a temporary folder and renamed into place, so concurrent runs never see
    a half-written dataset: the first to finish wins and the others discard their copy.
    """
    root = cache_dir() / "synthetic" / f"{synthetic_layout(name)}-ids{ids}-seed{seed}"
    return make_once(root, lambda scratch: write_layout(synthetic_layout(name), scratch, ids=ids, seed=seed))
