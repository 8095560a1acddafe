"""Datasets: their published layouts, the synthetic stand-ins, sampling and loading.

A dataset is three lists of samples, ``(path, pid, camid)``: train, query and gallery. Each
registered name maps to a reader of its published folder layout, to a writer of a synthetic copy in
the same layout (with exact cue maps), so that everything runs without the real data, and to the
name of its evaluation protocol (see harness.eval.metrics).

Registered names: market1501, dukemtmc, cuhk03-labeled, cuhk03-detected (767/700 protocol),
cuhk03-labeled-classic, cuhk03-detected-classic (classic split 0 of 20; split k is
cuhk03-labeled-classic-split<k>, harness/splits.py), cuhk01 (485/486, split seed
0), msmt17 (V1 or V2), occluded-reid (test only), folder (a generic query/gallery layout) and crowd-reid
(GASM's Crowd-REID test set, in the folder layout); and six sets SPReID only trains on, read whole as
a train split: 3dpes, cuhk02, prid (2011, single-shot), psdb (CUHK-SYSU, cropped to its training
persons), shinpuhkan and viper (`has_test_split` is false for them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.data import (
    cuhk01,
    cuhk02,
    cuhk03,
    dukemtmc,
    folder,
    market1501,
    msmt17,
    occluded,
    prid,
    psdb,
    shinpuhkan,
    threedpes,
    viper,
)
from harness.errors import UserError, closest
from harness.splits import split_of


@dataclass(frozen=True)
class Sample:
    path: str
    pid: int
    camid: int
    cue_key: str = ""  # where its cue maps are filed: <root>/cues/<cue>/<cue_key with the cue's suffix>
    root: str = ""  # that root, when samples of several datasets mix (a union, harness/data/union.py)


@dataclass(frozen=True)
class ReidData:
    name: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]

    @property
    def num_train_ids(self) -> int:
        return len({s.pid for s in self.train})


@dataclass(frozen=True)
class _Layout:
    read: Callable[[Path], tuple[list, list, list]]
    synthetic: str  # the layout name the synthetic writers know it by (harness.data.synthetic.layouts)
    protocol: str  # how harness.eval.metrics scores it
    tests: bool = True  # False for a training-only set: its reader returns no query or gallery


_LAYOUTS: dict[str, _Layout] = {
    "market1501": _Layout(market1501.read, "market1501", "market"),
    "dukemtmc": _Layout(dukemtmc.read, "dukemtmc", "market"),
    "cuhk03-labeled": _Layout(lambda root: cuhk03.read_new(root, "labeled"), "cuhk03", "market"),
    "cuhk03-detected": _Layout(lambda root: cuhk03.read_new(root, "detected"), "cuhk03", "market"),
    "cuhk03-labeled-classic": _Layout(lambda root: cuhk03.read_classic(root, "labeled"), "cuhk03", "cuhk03-classic"),
    "cuhk03-detected-classic": _Layout(lambda root: cuhk03.read_classic(root, "detected"), "cuhk03", "cuhk03-classic"),
    "cuhk01": _Layout(cuhk01.read, "cuhk01", "cuhk01"),
    "msmt17": _Layout(msmt17.read, "msmt17", "market"),
    "occluded-reid": _Layout(occluded.read, "occluded-reid", "occluded"),
    "folder": _Layout(folder.read, "folder", "market"),
    "crowd-reid": _Layout(folder.read, "folder", "market"),  # GASM's test set, converted to the folder layout
    # Training-only sets of SPReID's 10-set union (the protocol is never used: they have no test split).
    "3dpes": _Layout(threedpes.read, "3dpes", "market", tests=False),
    "cuhk02": _Layout(cuhk02.read, "cuhk02", "market", tests=False),
    "prid": _Layout(prid.read, "prid", "market", tests=False),
    "psdb": _Layout(psdb.read, "psdb", "market", tests=False),
    "shinpuhkan": _Layout(shinpuhkan.read, "shinpuhkan", "market", tests=False),
    "viper": _Layout(viper.read, "viper", "market", tests=False),
}


def dataset_names() -> list[str]:
    """The registered names; a dataset of several splits also answers to its splits' names
    (harness/splits.py: "cuhk03-labeled-classic-split3"), listed by split_names()."""
    return sorted(_LAYOUTS)


def _layout(name: str) -> _Layout:
    base, split = split_of(name)
    if base not in _LAYOUTS:
        raise UserError(f"unknown dataset {name!r}; {closest(name, _LAYOUTS)}")
    if split:  # the classic CUHK03 names: split k of the release's 20
        kind = base.removeprefix("cuhk03-").removesuffix("-classic")
        return dataclasses.replace(_LAYOUTS[base], read=lambda root: cuhk03.read_classic(root, kind, split))
    return _LAYOUTS[base]


def protocol(name: str) -> str:
    """The evaluation protocol of a registered dataset: market, cuhk03-classic, cuhk01 or occluded."""
    return _layout(name).protocol


def has_test_split(name: str) -> bool:
    """Whether a registered dataset can be tested on (the training-only sets cannot)."""
    return _layout(name).tests


def synthetic_layout(name: str) -> str:
    """The synthetic writer that produces `name`'s layout (the CUHK03 names share one)."""
    return _layout(name).synthetic


def load_dataset(name: str, root: str | Path) -> ReidData:
    """Read a dataset from its published layout under `root` (the folder that holds it)."""
    root = Path(root)
    train, query, gallery = _layout(name).read(root)
    return ReidData(name, _samples(train, root), _samples(query, root), _samples(gallery, root))


def _samples(items: list[tuple], root: Path) -> list[Sample]:
    """Readers give (path, pid, camid[, cue key]); the key defaults to the path below the root."""
    out = []
    for path, pid, camid, *key in items:
        out.append(Sample(str(path), int(pid), int(camid), key[0] if key else Path(path).relative_to(root).as_posix()))
    return out
