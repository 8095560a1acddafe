"""Datasets: their published layouts, the synthetic stand-ins, sampling and loading.

A dataset is three lists of samples, ``(path, pid, camid)``: train, query and gallery. Each
registered name maps to a reader of its published folder layout and to a writer of a synthetic
copy in the same layout, so that everything runs without the real data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.data import market1501


@dataclass(frozen=True)
class Sample:
    path: str
    pid: int
    camid: int


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
    write_synthetic: Callable[..., Path]


def _write_synthetic_market1501(root: Path, *, ids: int, seed: int) -> Path:
    from harness.data.synthetic import write_market1501

    return write_market1501(root, ids=ids, seed=seed)


_LAYOUTS: dict[str, _Layout] = {
    "market1501": _Layout(market1501.read, _write_synthetic_market1501),
}


def dataset_names() -> list[str]:
    return sorted(_LAYOUTS)


def cache_dir() -> Path:
    """Where generated data lives: $REIDBENCH_CACHE, else ~/.cache/reidbench."""
    return Path(os.environ.get("REIDBENCH_CACHE", Path.home() / ".cache" / "reidbench"))


def load_dataset(name: str, root: str | Path) -> ReidData:
    """Read a dataset from its published layout under `root` (the folder that holds it)."""
    train, query, gallery = _LAYOUTS[name].read(Path(root))
    as_samples = lambda items: [Sample(str(p), pid, cam) for p, pid, cam in items]  # noqa: E731
    return ReidData(name, as_samples(train), as_samples(query), as_samples(gallery))


def synthetic_root(name: str, *, ids: int, seed: int) -> Path:
    """The root of the synthetic copy of `name`, generated once into the cache.

    It is written into a temporary folder and renamed into place, so concurrent runs never see
    a half-written dataset: the first to finish wins and the others discard their copy.
    """
    root = cache_dir() / "synthetic" / f"{name}-ids{ids}-seed{seed}"
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        _LAYOUTS[name].write_synthetic(scratch, ids=ids, seed=seed)
        os.rename(scratch, root)
    except OSError:
        if not root.is_dir():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root
