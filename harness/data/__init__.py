"""Datasets: their published layouts, the synthetic stand-ins, sampling and loading.

A dataset is three lists of samples, ``(path, pid, camid)``: train, query and gallery. Each
registered name maps to a reader of its published folder layout, to a writer of a synthetic copy in
the same layout (with exact cue maps), so that everything runs without the real data, and to the
name of its evaluation protocol (see harness.evaluate).

Registered names: market1501, dukemtmc, cuhk03-labeled, cuhk03-detected (767/700 protocol),
cuhk03-labeled-classic, cuhk03-detected-classic (classic split 0 of 20), cuhk01 (485/486, split seed
0), msmt17 (V1 or V2), occluded-reid (test only), folder (a generic query/gallery layout) and crowd-reid
(GASM's Crowd-REID test set, in the folder layout).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.data import cuhk01, cuhk03, dukemtmc, folder, market1501, msmt17, occluded
from harness.data.files import make_once
from harness.errors import UserError, closest


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
    synthetic: str  # the layout name the synthetic writers know it by (harness.data.synth_layouts)
    protocol: str  # how harness.evaluate scores it


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
}


def dataset_names() -> list[str]:
    return sorted(_LAYOUTS)


def _layout(name: str) -> _Layout:
    if name not in _LAYOUTS:
        raise UserError(f"unknown dataset {name!r}; {closest(name, _LAYOUTS)}")
    return _LAYOUTS[name]


def protocol(name: str) -> str:
    """The evaluation protocol of a registered dataset: market, cuhk03-classic, cuhk01 or occluded."""
    return _layout(name).protocol


def synthetic_layout(name: str) -> str:
    """The synthetic writer that produces `name`'s layout (the CUHK03 names share one)."""
    return _layout(name).synthetic


def cache_dir() -> Path:
    """Where generated data lives: $REIDBENCH_CACHE, else ~/.cache/reidbench."""
    return Path(os.environ.get("REIDBENCH_CACHE", Path.home() / ".cache" / "reidbench"))


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


def synthetic_root(name: str, *, ids: int, seed: int) -> Path:
    """The root of the synthetic copy of `name`, generated once into the cache.

    It is written into a temporary folder and renamed into place, so concurrent runs never see
    a half-written dataset: the first to finish wins and the others discard their copy.
    """
    from harness.data.synth_layouts import write_layout

    root = cache_dir() / "synthetic" / f"{synthetic_layout(name)}-ids{ids}-seed{seed}"
    return make_once(root, lambda scratch: write_layout(synthetic_layout(name), scratch, ids=ids, seed=seed))
