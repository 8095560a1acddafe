"""CUHK03 (Li et al., CVPR 2014): the raw MATLAB release and both evaluation protocols.

``cuhk03_release/cuhk-03.mat`` is MATLAB v7.3 (HDF5, read with h5py): ``labeled`` and ``detected``
are 5 cells, one per camera pair, each a (persons x 10) cell of images (columns 0-4 from the pair's
first camera, 5-9 from its second; empty cells mark missing images); ``testsets`` holds the 20
classic splits, each 100 (pair, person) rows, 1-based. Images are extracted once as PNG named
``{pair}_{person:03d}_{view}_{image:02d}.png`` into ``<root>/cuhk03-extracted/`` or, when the root is
not writable, into the reidbench cache; the release itself is never written to.

Protocols:
- 767/700 (Zhong et al., CVPR 2017): ``cuhk03_new_protocol_config_{labeled,detected}.mat`` in the
  root (or in ``cuhk03_release/``), read with scipy: ``filelist``, ``labels``, ``camId`` and the
  1-based ``train_idx``, ``query_idx``, ``gallery_idx``. Evaluated like Market-1501.
- classic (Li et al.; SPReID): split ``i`` of ``testsets`` tests on its 100 persons (queries from
  view 1, gallery from view 2) and trains on all others. Registered as ``cuhk03-*-classic`` with
  split 0; :func:`read_classic` reads any of the 20.

Cue maps of extracted images are filed under ``<root>/cues/<cue>/{labeled,detected}/<name>.png``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.files import Items, cache_dir, make_once
from harness.errors import UserError

RELEASE = "cuhk03_release"
MAT = "cuhk-03.mat"
KINDS = ("labeled", "detected")


def config_name(kind: str) -> str:
    return f"cuhk03_new_protocol_config_{kind}.mat"


def image_name(pair: int, person: int, column: int) -> str:
    """0-based pair, person, column -> the release's conventional 1-based file name."""
    return f"{pair + 1}_{person + 1:03d}_{1 if column < 5 else 2}_{column + 1:02d}.png"


def read_new(root: Path, kind: str) -> tuple[Items, Items, Items]:
    """The 767/700 protocol."""
    from scipy.io import loadmat

    folder = extract(root, kind)
    path = next((p for p in (root / config_name(kind), root / RELEASE / config_name(kind)) if p.is_file()), None)
    if path is None:
        raise UserError(
            f"CUHK03 767/700 protocol: {config_name(kind)} not found in {root} or {root / RELEASE}. "
            "It ships separately from the release (Zhong et al., re-ranking)."
        )
    try:
        split = loadmat(path)
        files = [str(np.asarray(f).ravel()[0]) for f in split["filelist"].ravel()]
        labels, cams = split["labels"].ravel().astype(int), split["camId"].ravel().astype(int)
        index = {key: split[key].ravel().astype(int) - 1 for key in ("train_idx", "query_idx", "gallery_idx")}
    except (KeyError, ValueError, IndexError, OSError) as err:
        raise UserError(
            f"CUHK03: {path} is not a 767/700 split file (needs filelist, labels, camId, "
            f"train_idx, query_idx, gallery_idx): {err}"
        ) from None

    def items(idx: np.ndarray) -> Items:
        if len(idx) and (idx.min() < 0 or idx.max() >= len(files)):
            raise UserError(f"CUHK03: {path} has an index outside 1..{len(files)} (the filelist's length).")
        return [(folder / files[i], int(labels[i]), int(cams[i]) - 1, f"{kind}/{files[i]}") for i in idx]

    out = tuple(items(index[key]) for key in ("train_idx", "query_idx", "gallery_idx"))
    missing = [str(p) for p, *_ in out[0] + out[1] + out[2] if not p.is_file()]
    if missing:
        raise UserError(
            f"CUHK03: {len(missing)} file(s) named in {path} are not in the release's {kind} images, e.g. {missing[0]}."
        )
    return out


def read_classic(root: Path, kind: str, split: int = 0) -> tuple[Items, Items, Items]:
    """Classic split `split` (0-19): 100 test persons, single-shot view 1 -> view 2."""
    folder = extract(root, kind)
    testsets = _read_mat(root, lambda mat: [_deref(mat, ref).T.astype(int) for ref in mat["testsets"][()].ravel()])
    if not 0 <= split < len(testsets):
        raise UserError(
            f"CUHK03 classic protocol: split {split} does not exist; the release has {len(testsets)} (0-{len(testsets) - 1})."
        )
    test = {(int(pair), int(person)) for pair, person in testsets[split]}
    train, query, gallery = [], [], []
    for path in sorted(folder.glob("*.png")):
        pair, person, view, _ = (int(x) for x in path.stem.split("_"))
        pid = pair * 1000 + person  # unique across pairs
        item = (path, pid, view - 1, f"{kind}/{path.name}")
        if (pair, person) not in test:
            train.append(item)
        else:
            (query if view == 1 else gallery).append(item)
    return train, query, gallery


def _deref(mat, ref) -> np.ndarray:
    return mat[ref][()]


def _read_mat(root: Path, read):
    import h5py

    path = root / RELEASE / MAT
    if not path.is_file():
        raise UserError(f"CUHK03 not found: expected the release's MATLAB file at {path}.")
    try:
        with h5py.File(path, "r") as mat:
            return read(mat)
    except (OSError, KeyError) as err:
        raise UserError(
            f"CUHK03: cannot read {path} as a MATLAB v7.3 (HDF5) file with labeled, detected and testsets: {err}"
        ) from None


def extracted_dir(root: Path) -> Path:
    """Beside the data when the root is writable, else in the cache (keyed by the root's path)."""
    if os.access(root, os.W_OK):
        return root / "cuhk03-extracted"
    return cache_dir() / "cuhk03-extracted" / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]


def extract(root: Path, kind: str) -> Path:
    """The folder of `kind`'s PNG images, extracted from the .mat on first use (atomically)."""
    return make_once(
        extracted_dir(root) / kind, lambda scratch: _read_mat(root, lambda mat: _write_images(mat, kind, scratch))
    )


def _write_images(mat, kind: str, out: Path) -> None:
    for pair, ref in enumerate(mat[kind][()].ravel()):
        cells = _deref(mat, ref).T  # (persons, 10) references
        for person in range(cells.shape[0]):
            for column in range(cells.shape[1]):
                pixels = _deref(mat, cells[person, column])
                if pixels.ndim != 3:
                    continue  # an empty cell: this image does not exist
                Image.fromarray(np.ascontiguousarray(pixels.T).astype(np.uint8)).save(
                    out / image_name(pair, person, column)
                )
