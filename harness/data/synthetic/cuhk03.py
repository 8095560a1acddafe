"""A synthetic CUHK03 release: ``cuhk03_release/cuhk-03.mat`` (MATLAB v7.3, written with h5py) and
the 767/700 split files ``cuhk03_new_protocol_config_{labeled,detected}.mat`` (written with scipy),
in the structure harness/data/cuhk03.py documents, with exact cues for every image."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np

from harness.data import cuhk03
from harness.data.cues import write_cues
from harness.data.synthetic.render import Scene

_PAIRS = 5


def write_mat73(path: Path, cells: dict[str, list], testsets: list[np.ndarray]) -> None:
    """`cells[kind][pair]` is a (persons, 10) nested list of uint8 (H, W, 3) images or None."""
    with h5py.File(path, "w", userblock_size=512) as mat:
        refs = mat.create_group("#refs#")
        counter = iter(range(10**9))

        def put(value: np.ndarray | None, matlab_class: str):
            name = f"r{next(counter)}"
            if value is None:  # MATLAB's empty matrix
                data = refs.create_dataset(name, data=np.zeros(2, np.uint64))
                data.attrs["MATLAB_empty"] = np.uint8(1)
                matlab_class = "double"
            else:
                data = refs.create_dataset(name, data=value)
            data.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            return data.ref

        def cell(name_or_group, shape, items, group=None):
            array = np.empty(shape, dtype=h5py.ref_dtype)
            array.ravel()[:] = items
            data = (group or refs).create_dataset(name_or_group, data=array)
            data.attrs["MATLAB_class"] = np.bytes_("cell")
            return data.ref

        for kind, pairs in cells.items():
            pair_refs = []
            for index, persons in enumerate(pairs):
                images = [
                    put(None if img is None else np.ascontiguousarray(img.T), "uint8") for row in persons for img in row
                ]
                # MATLAB is column-major: a (persons x 10) cell is stored as (10, persons).
                grid = np.asarray(images, dtype=object).reshape(len(persons), 10).T
                pair_refs.append(cell(f"{kind}{index}", grid.shape, list(grid.ravel())))
            cell(kind, (1, len(pair_refs)), pair_refs, group=mat)
        cell("testsets", (len(testsets), 1), [put(t.T.astype(np.float64), "double") for t in testsets], group=mat)
    header = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {time.strftime('%a %b %d %H:%M:%S %Y', time.gmtime(0))} HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.encode().ljust(116) + b"\0" * 8 + b"\x00\x02IM")


def write_cuhk03(root: Path, *, ids: int, seed: int) -> Path:
    """`ids` persons spread over 5 camera pairs; 3-5 images per view, missing ones left empty."""
    rng = np.random.default_rng((seed, 0))
    (root / cuhk03.RELEASE).mkdir(parents=True, exist_ok=True)
    members = [list(range(pair, ids, _PAIRS)) for pair in range(_PAIRS)]
    cells: dict[str, list] = {}
    names: list[tuple[str, int, int]] = []  # file name, person label (1-based), view
    for stream, kind in ((5, "labeled"), (6, "detected")):
        scene, pairs = Scene(seed, 2 * _PAIRS), []
        for pair, persons in enumerate(members):
            rows = []
            for person, index in enumerate(persons):
                row: list = [None] * 10
                for view in range(2):
                    shots = scene.shots(index, 2 * pair + view, int(rng.integers(3, 6)), stream=stream)
                    for k, r in enumerate(shots):
                        column = 5 * view + k
                        row[column] = r.image
                        name = cuhk03.image_name(pair, person, column)
                        write_cues(root, f"{kind}/{name}", r)
                        if kind == "labeled":
                            names.append((name, index + 1, view + 1))
                rows.append(row)
            pairs.append(rows)
        cells[kind] = pairs
    people = [(pair + 1, person + 1) for pair, persons in enumerate(members) for person in range(len(persons))]
    n_test = max(2, ids // 5)
    testsets = [np.asarray([people[i] for i in np.sort(rng.permutation(ids)[:n_test])]) for _ in range(20)]
    write_mat73(root / cuhk03.RELEASE / cuhk03.MAT, cells, testsets)
    for kind in cuhk03.KINDS:
        _write_new_protocol(root / cuhk03.config_name(kind), _files_of(root, kind, cells, members, names), ids, rng)
    return root / cuhk03.RELEASE


def _files_of(root, kind, cells, members, names):
    """The (name, label, view) of every non-empty image of `kind` (labeled and detected differ)."""
    out = []
    for pair, rows in enumerate(cells[kind]):
        for person, row in enumerate(rows):
            for column, img in enumerate(row):
                if img is not None:
                    out.append((cuhk03.image_name(pair, person, column), members[pair][person] + 1, 1 + column // 5))
    return out


def _write_new_protocol(path: Path, files: list[tuple[str, int, int]], ids: int, rng: np.random.Generator) -> None:
    from scipy.io import savemat

    test = set((rng.permutation(ids)[ids // 2 :] + 1).tolist())
    train_idx, query_idx, gallery_idx, seen = [], [], [], set()
    for i, (_, label, view) in enumerate(files, 1):
        if label not in test:
            train_idx.append(i)
        elif (label, view) not in seen:
            seen.add((label, view))
            query_idx.append(i)
        else:
            gallery_idx.append(i)
    filelist = np.empty((len(files), 1), dtype=object)
    for i, (name, _, _) in enumerate(files):
        filelist[i, 0] = np.asarray([name])
    column = lambda values, dtype: np.asarray(values, dtype).reshape(-1, 1)  # noqa: E731
    # The published files hold the index arrays as integers; readers index the filelist with them
    # directly (torchreid's cuhk03.py: ``filelist[idx]``), which a float array would break.
    savemat(
        path,
        {
            "filelist": filelist,
            "labels": column([f[1] for f in files], np.float64),
            "camId": column([f[2] for f in files], np.float64),
            "train_idx": column(train_idx, np.int32),
            "query_idx": column(query_idx, np.int32),
            "gallery_idx": column(gallery_idx, np.int32),
        },
    )
    with open(path, "r+b") as f:  # scipy stamps the creation time into the header; same seed, same bytes
        f.write(b"MATLAB 5.0 MAT-file Platform: posix, Created on: Thu Jan  1 00:00:00 1970".ljust(116))
