"""Datasets published with several train/test splits, and the names of their splits.

CUHK03's classic protocol (Li et al., CVPR 2014; SPReID's ref. [24]) publishes 20 random splits of
100 test persons, and papers report the mean over them. Split 0 keeps the dataset's own name (the
cells and rows written before splits existed stay as they are); split k > 0 is named
``<dataset>-split<k>``, in the cell's training, fine-tuning and test dataset names alike, so each
split is a cell of its own and its rows say which split they measure. A grid runs several with
``[grid] splits = N`` (harness/spec/parse.py); a report averages a number over the splits it finds
and says how many (harness/report/tables.py).

Names only: the data layer reads a split (harness/data/__init__.py), the report groups by it; both
import this module, which imports nothing of reidbench's.
"""

from __future__ import annotations

import re

SPLITS = {"cuhk03-labeled-classic": 20, "cuhk03-detected-classic": 20}  # dataset -> published splits

_SUFFIX = re.compile(r"^(?P<base>.+)-split(?P<k>[1-9][0-9]*)$")
_ANY = re.compile("(?P<base>" + "|".join(map(re.escape, SPLITS)) + r")-split[1-9][0-9]*(?![0-9])")


def split_name(dataset: str, split: int) -> str:
    """The name of `dataset`'s split `split` (0: the dataset's own name)."""
    if dataset not in SPLITS or not 0 <= split < SPLITS[dataset]:
        raise ValueError(f"{dataset!r} has no split {split}")
    return dataset if split == 0 else f"{dataset}-split{split}"


def split_of(name: str) -> tuple[str, int]:
    """(dataset, split) of a dataset name: ("cuhk03-labeled-classic", 3) for
    "cuhk03-labeled-classic-split3"; (name, 0) for any other name."""
    found = _SUFFIX.match(name)
    if found and found["base"] in SPLITS and int(found["k"]) < SPLITS[found["base"]]:
        return found["base"], int(found["k"])
    return name, 0


def split_names() -> list[str]:
    """Every split's name beyond split 0."""
    return [split_name(d, k) for d, n in SPLITS.items() for k in range(1, n)]


def unsplit(names: str) -> str:
    """Any text of dataset names ("a+b", "a+b>c", ...) with every split suffix removed."""
    return _ANY.sub(lambda found: found["base"], names)


def split_in(*names: str | None) -> int:
    """The split a cell's datasets (names or unions) are of: the largest among their members (a
    cell's split datasets all share one split)."""
    return max((split_of(part)[1] for name in names if name for part in name.split("+")), default=0)
