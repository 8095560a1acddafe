"""Reading Market-1501's published layout, from the synthetic writer and from hand-made fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.data import load_dataset, market1501
from harness.data.synthetic.market1501 import write_market1501
from harness.errors import UserError


def touch_layout(root: Path, files: dict[str, list[str]]) -> Path:
    for split in market1501.SPLITS:
        folder = root / market1501.FOLDER / split
        folder.mkdir(parents=True)
        for name in files.get(split, []):
            (folder / name).write_bytes(b"")
    return root


def test_hand_made_fixture_in_the_real_naming(tmp_path):
    root = touch_layout(
        tmp_path,
        {
            "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c6s3_085567_02.jpg"],
            "query": ["0001_c1s1_001051_00.jpg"],
            "bounding_box_test": ["0001_c2s1_000301_01.jpg", "0000_c1s1_000151_01.jpg", "-1_c1s1_000401_03.jpg"],
        },
    )
    (root / market1501.FOLDER / "bounding_box_test" / "Thumbs.db").write_bytes(b"")
    data = load_dataset("market1501", root)
    assert [(s.pid, s.camid) for s in data.train] == [(2, 0), (2, 1), (7, 5)]
    assert [(s.pid, s.camid) for s in data.query] == [(1, 0)]
    assert sorted((s.pid, s.camid) for s in data.gallery) == [(0, 0), (1, 1)]  # junk dropped, distractor kept
    assert data.num_train_ids == 2


def test_synthetic_writer_output_parses(tmp_path):
    write_market1501(tmp_path, ids=12, seed=3)
    data = load_dataset("market1501", tmp_path)
    assert data.num_train_ids == 6 and len({s.pid for s in data.query}) == 6
    assert {s.pid for s in data.gallery} >= {0} and -1 not in {s.pid for s in data.gallery}
    assert all(Path(s.path).is_file() for s in data.train + data.query + data.gallery)


def test_missing_top_folder_names_the_expected_path(tmp_path):
    with pytest.raises(UserError, match=f"expected the folder {tmp_path / 'Market-1501-v15.09.15'}"):
        load_dataset("market1501", tmp_path)


def test_missing_split_folder_is_named(tmp_path):
    (tmp_path / market1501.FOLDER / "bounding_box_train").mkdir(parents=True)
    with pytest.raises(UserError, match="missing folder\\(s\\) query, bounding_box_test in"):
        load_dataset("market1501", tmp_path)


def test_badly_named_files_are_reported_with_an_example(tmp_path):
    root = touch_layout(
        tmp_path,
        {
            "bounding_box_train": ["0002_c1s1_000451_03.jpg", "person_2.jpg"],
            "query": ["0001_c1s1_001051_00.jpg"],
            "bounding_box_test": ["0001_c2s1_000301_01.jpg"],
        },
    )
    with pytest.raises(UserError, match="1 file\\(s\\) in .*bounding_box_train are not named like .*'person_2.jpg'"):
        load_dataset("market1501", root)
