"""Every published layout read from hand-made miniature fixtures in the real naming."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from harness import data
from harness.data import cuhk03
from harness.data.synthetic.cuhk03 import write_mat73
from harness.errors import UserError


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def pids_cams(samples):
    return sorted((s.pid, s.camid) for s in samples)


def test_dukemtmc(tmp_path):
    touch(
        tmp_path,
        "DukeMTMC-reID/bounding_box_train/0005_c2_f0046985.jpg",
        "DukeMTMC-reID/bounding_box_train/0005_c5_f0051341.jpg",
        "DukeMTMC-reID/query/0001_c2_f0046182.jpg",
        "DukeMTMC-reID/bounding_box_test/0001_c6_f0030823.jpg",
        "DukeMTMC-reID/bounding_box_test/0002_c8_f0030823.jpg",
    )
    d = data.load_dataset("dukemtmc", tmp_path)
    assert pids_cams(d.train) == [(5, 1), (5, 4)] and pids_cams(d.query) == [(1, 1)]
    assert pids_cams(d.gallery) == [(1, 5), (2, 7)] and data.protocol("dukemtmc") == "market"
    assert d.query[0].cue_key == "DukeMTMC-reID/query/0001_c2_f0046182.jpg"


def test_dukemtmc_refuses_a_camera_out_of_range(tmp_path):
    touch(
        tmp_path,
        "DukeMTMC-reID/bounding_box_train/0005_c9_f0046985.jpg",
        "DukeMTMC-reID/query/0001_c2_f0046182.jpg",
        "DukeMTMC-reID/bounding_box_test/0001_c6_f0030823.jpg",
    )
    with pytest.raises(UserError, match="not named like 0005_c2_f0046985.jpg .*'0005_c9_f0046985.jpg'"):
        data.load_dataset("dukemtmc", tmp_path)


def test_cuhk01_split_is_seeded_485_486_style(tmp_path):
    touch(tmp_path, *(f"campus/{pid:04d}{k:03d}.png" for pid in range(1, 11) for k in range(1, 5)))
    d = data.load_dataset("cuhk01", tmp_path)
    assert d.num_train_ids == 5 and len(d.train) == 20
    assert {s.camid for s in d.query} == {0} and {s.camid for s in d.gallery} == {1}
    assert {s.pid for s in d.query} == {s.pid for s in d.gallery} and not {s.pid for s in d.query} & {
        s.pid for s in d.train
    }
    again, other = (data.cuhk01.read(tmp_path, split_seed=seed) for seed in (0, 1))
    assert [i[0] for i in again[0]] == [Path(s.path) for s in d.train]
    assert {i[1] for i in other[0]} != {s.pid for s in d.train}
    assert data.protocol("cuhk01") == "cuhk01"


@pytest.mark.parametrize(
    "version,train_dir,test_dir", [("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2")]
)
def test_msmt17_both_versions(tmp_path, version, train_dir, test_dir):
    base = tmp_path / version
    touch(
        base,
        f"{train_dir}/0000/0000_000_01_0303morning_0015_0.jpg",
        f"{train_dir}/0001/0001_003_15_0303noon_0100_1.jpg",
        f"{test_dir}/0000/0000_000_07_0303morning_0037_0.jpg",
        f"{test_dir}/0000/0000_001_02_0303afternoon_0111_0.jpg",
    )
    (base / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
    (base / "list_val.txt").write_text("0001/0001_003_15_0303noon_0100_1.jpg 1\n")
    (base / "list_query.txt").write_text("0000/0000_000_07_0303morning_0037_0.jpg 0\n")
    (base / "list_gallery.txt").write_text("0000/0000_001_02_0303afternoon_0111_0.jpg 0\n")
    d = data.load_dataset("msmt17", tmp_path)
    assert (
        pids_cams(d.train) == [(0, 0), (1, 14)] and pids_cams(d.query) == [(0, 6)] and pids_cams(d.gallery) == [(0, 1)]
    )
    assert Path(d.train[0].path).is_file()


def test_msmt17_bad_list_line_is_named(tmp_path):
    base = tmp_path / "MSMT17_V1"
    base.mkdir()
    for name in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt"):
        (base / name).write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
    (base / "list_query.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\nbroken\n")
    with pytest.raises(UserError, match="list_query.txt, line 2"):
        data.load_dataset("msmt17", tmp_path)


def test_occluded_reid(tmp_path):
    touch(
        tmp_path,
        *(
            f"Occluded_REID/{split}/{pid:03d}/{pid:03d}_{k:02d}.tif"
            for split in ("occluded_body_images", "whole_body_images")
            for pid in (1, 2)
            for k in (1, 2)
        ),
    )
    d = data.load_dataset("occluded-reid", tmp_path)
    assert (
        d.train == []
        and pids_cams(d.query) == [(1, 1), (1, 2), (2, 1), (2, 2)]  # camid: the image's index (FastReID's loader)
        and pids_cams(d.gallery) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    )
    assert data.protocol("occluded-reid") == "occluded"


def test_folder(tmp_path):
    touch(tmp_path, "query/0001_c1_a.jpg", "gallery/0001_c2_b.jpg", "gallery/0000_c1_c.png", "gallery/-1_c1_d.jpg")
    d = data.load_dataset("folder", tmp_path)
    assert d.train == [] and pids_cams(d.query) == [(1, 0)] and pids_cams(d.gallery) == [(0, 0), (1, 1)]


def _image(value: int) -> np.ndarray:
    return np.full((8, 4, 3), value, np.uint8)


@pytest.fixture
def cuhk03_root(tmp_path):
    """Two camera pairs, persons with some images missing, a v7.3 .mat and a 767/700-style split file."""
    row = lambda v, n: [_image(v + k) if k < n or 5 <= k < 5 + n else None for k in range(10)]  # noqa: E731
    cells = {"labeled": [[row(10, 2), row(20, 3)], [row(30, 1)]], "detected": [[row(40, 2), row(50, 2)], [row(60, 1)]]}
    (tmp_path / "cuhk03_release").mkdir()
    write_mat73(
        tmp_path / "cuhk03_release" / "cuhk-03.mat", cells, [np.asarray([[1, 2], [2, 1]]), np.asarray([[1, 1], [2, 1]])]
    )
    files = [
        "1_001_1_01.png",
        "1_001_2_06.png",
        "1_002_1_01.png",
        "1_002_1_02.png",
        "1_002_2_06.png",
        "2_001_1_01.png",
        "2_001_2_06.png",
    ]
    filelist = np.empty((len(files), 1), dtype=object)
    for i, name in enumerate(files):
        filelist[i, 0] = np.asarray([name])
    col = lambda v: np.asarray(v, float).reshape(-1, 1)  # noqa: E731
    savemat(
        tmp_path / "cuhk03_new_protocol_config_labeled.mat",
        {
            "filelist": filelist,
            "labels": col([1, 1, 2, 2, 2, 3, 3]),
            "camId": col([1, 2, 1, 1, 2, 1, 2]),
            "train_idx": col([1, 2]),
            "query_idx": col([3, 6]),
            "gallery_idx": col([4, 5, 7]),
        },
    )
    return tmp_path


def test_cuhk03_mat_is_a_matlab_73_file(cuhk03_root):
    path = cuhk03_root / "cuhk03_release" / "cuhk-03.mat"
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(path, "r") as mat:
        assert mat["labeled"].shape == (1, 2) and mat["labeled"].attrs["MATLAB_class"] == b"cell"
        assert mat[mat["labeled"][0, 0]].shape == (10, 2)  # MATLAB's (persons x 10), column-major


def test_cuhk03_new_protocol(cuhk03_root):
    d = data.load_dataset("cuhk03-labeled", cuhk03_root)
    assert pids_cams(d.train) == [(1, 0), (1, 1)]
    assert pids_cams(d.query) == [(2, 0), (3, 0)] and pids_cams(d.gallery) == [(2, 0), (2, 1), (3, 1)]
    first = next(s for s in d.query if s.pid == 2)
    assert np.asarray(Image.open(first.path)).shape == (8, 4, 3) and np.asarray(Image.open(first.path))[0, 0, 0] == 20
    assert first.cue_key == "labeled/1_002_1_01.png"
    assert Path(first.path).parent == cuhk03_root / "cuhk03-extracted" / "labeled"


def test_cuhk03_classic_protocol(cuhk03_root):
    d = data.load_dataset(
        "cuhk03-labeled-classic", cuhk03_root
    )  # split 0 tests (pair 1, person 2) and (pair 2, person 1)
    assert {s.pid for s in d.query} == {s.pid for s in d.gallery} == {1002, 2001}
    assert {s.camid for s in d.query} == {0} and {s.camid for s in d.gallery} == {1}
    assert {s.pid for s in d.train} == {1001}
    train, _, _ = cuhk03.read_classic(cuhk03_root, "detected", 1)
    assert {i[1] for i in train} == {1002}
    with pytest.raises(UserError, match="split 5 does not exist; the release has 2"):
        cuhk03.read_classic(cuhk03_root, "labeled", 5)
    assert data.protocol("cuhk03-labeled-classic") == "cuhk03-classic" and data.protocol("cuhk03-labeled") == "market"


def test_cuhk03_read_only_release_extracts_into_the_cache(cuhk03_root, tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("REIDBENCH_CACHE", str(cache))
    os.chmod(cuhk03_root, 0o555)
    real_access = os.access  # root ignores permissions, so the check itself answers "not writable" here
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if Path(path) == cuhk03_root else real_access(path, mode)
    )
    try:
        d = data.load_dataset("cuhk03-labeled", cuhk03_root)
        assert Path(d.train[0].path).is_relative_to(cache) and not (cuhk03_root / "cuhk03-extracted").exists()
        assert d.train[0].cue_key == "labeled/1_001_1_01.png"  # cues stay filed beside the data
    finally:
        os.chmod(cuhk03_root, 0o755)


def test_cuhk03_missing_split_file_is_explained(cuhk03_root):
    with pytest.raises(UserError, match="cuhk03_new_protocol_config_detected.mat not found"):
        data.load_dataset("cuhk03-detected", cuhk03_root)


def test_cuhk03_not_a_mat_file(tmp_path):
    (tmp_path / "cuhk03_release").mkdir()
    (tmp_path / "cuhk03_release" / "cuhk-03.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(UserError, match="cannot read .*cuhk-03.mat as a MATLAB v7.3"):
        data.load_dataset("cuhk03-labeled", tmp_path)


def test_unknown_dataset_name_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'cuhk01'"):
        data.load_dataset("cuhk1", "/nonexistent")
