"""SPReID's six training-only sets: each reader on its synthetic layout (counts, identities and
cameras), a malformed file named in the error, `data check` against the published counts, the spec
rules for sets without a test split, and CUHK03's integer split indices."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from harness import data
from harness.cli.data import counts_table
from harness.data import ReidData, Sample, cuhk03, psdb
from harness.data.cues import CUES, check_files
from harness.data.published import PUBLISHED
from harness.data.synthetic.layouts import write_layout
from harness.data.union import load_training
from harness.errors import UserError
from harness.spec import load_spec
from tests.helpers import cache_env, reidbench, write_spec

SETS = ("3dpes", "cuhk02", "prid", "psdb", "shinpuhkan", "viper")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sets")
    for name in SETS:
        write_layout(name, base / name, ids=10, seed=3)
    return {name: base / name for name in SETS}


def by_pid(d: ReidData) -> dict[int, set[int]]:
    cams: dict[int, set[int]] = {}
    for s in d.train:
        cams.setdefault(s.pid, set()).add(s.camid)
    return cams


@pytest.mark.parametrize("name", SETS)
def test_every_set_reads_whole_as_training_data_with_every_cue(roots, name):
    d = data.load_dataset(name, roots[name])
    assert d.train and not d.query and not d.gallery and not data.has_test_split(name)
    assert check_files(d.train, roots[name], CUES) == []


def test_viper_one_image_per_person_in_each_camera(roots):
    d = data.load_dataset("viper", roots["viper"])
    assert len(d.train) == 20 and by_pid(d) == {pid: {0, 1} for pid in range(10)}


def test_prid_shares_persons_1_to_200_only(roots):
    d = data.load_dataset("prid", roots["prid"])
    cams = by_pid(d)
    # 10 persons: 5 in both cameras (1-5), 1 in A only (201), 4 in B only (B's 201-204 -> 1201-1204).
    assert cams == {**{p: {0, 1} for p in range(1, 6)}, 201: {0}, **{1000 + p: {1} for p in range(201, 205)}}
    assert len(d.train) == 15


def test_cuhk02_numbers_persons_per_camera_pair(roots):
    d = data.load_dataset("cuhk02", roots["cuhk02"])
    cams = by_pid(d)
    assert len(cams) == 10 and len(d.train) == 40
    for pid, seen in cams.items():
        pair = pid // 10000  # the same number in two pairs is two persons, each in its pair's two cameras
        assert seen == {2 * (pair - 1), 2 * (pair - 1) + 1}
    assert {10001, 20001, 30001, 40001, 50001, 10002} <= set(cams)


def test_3dpes_and_shinpuhkan_cameras(roots):
    pes = by_pid(data.load_dataset("3dpes", roots["3dpes"]))
    assert sorted(pes) == list(range(1, 11)) and all(2 <= len(c) <= 3 and c <= set(range(1, 9)) for c in pes.values())
    shin = by_pid(data.load_dataset("shinpuhkan", roots["shinpuhkan"]))
    assert sorted(shin) == list(range(1, 11)) and all(4 <= len(c) <= 6 and c <= set(range(16)) for c in shin.values())


def test_psdb_crops_every_box_of_the_training_persons_only(roots):
    root = roots["psdb"]
    persons = loadmat(root / "dataset" / psdb.TRAIN)["Train"].ravel()
    boxes = {int(str(p.ravel()[0]["idname"].ravel()[0])[1:]): p.ravel()[0]["scene"].size for p in persons}
    d = data.load_dataset("psdb", root)
    assert Counter(s.pid for s in d.train) == boxes and len(boxes) == 5  # half of the 10 persons train
    from PIL import Image

    assert {Image.open(s.path).size for s in d.train} == {(64, 128)}
    assert all(Path(s.path).parent.name == psdb.CROPS for s in d.train)


@pytest.mark.parametrize(
    ("name", "folder", "bad"),
    [
        ("viper", "VIPeR/cam_b", "angle45.bmp"),
        ("prid", "single_shot/cam_a", "person_12.png"),
        ("3dpes", "3DPeS/RGB", "person1.bmp"),
        ("shinpuhkan", "Shinpuhkan2014dataset/images", "1_1_x.jpg"),
        ("cuhk02", "Dataset/P3/cam2", "0001-1.png"),
    ],
)
def test_a_misnamed_image_is_named_in_the_error(tmp_path, name, folder, bad):
    write_layout(name, tmp_path, ids=4, seed=0)
    (tmp_path / folder / bad).write_bytes(b"")
    with pytest.raises(UserError, match=f"not named like .*{bad}"):
        data.load_dataset(name, tmp_path)


def test_a_missing_folder_says_which(tmp_path):
    with pytest.raises(UserError, match=r"CUHK02 not found: expected the folder Dataset"):
        data.load_dataset("cuhk02", tmp_path)


def test_psdb_errors_name_the_annotation_file(tmp_path):
    write_layout("psdb", tmp_path, ids=4, seed=0)
    mat = tmp_path / "dataset" / psdb.TRAIN
    savemat(mat, {"Other": np.zeros(2)})
    with pytest.raises(UserError, match=r"Train\.mat is not CUHK-SYSU's Train\.mat"):
        data.load_dataset("psdb", tmp_path)
    write_layout("psdb", tmp_path / "b", ids=4, seed=0)
    train = loadmat(tmp_path / "b" / "dataset" / psdb.TRAIN)
    train["Train"][0, 0][0, 0]["scene"][0, 0]["idlocate"] = np.asarray([[5000.0, 10.0, 64.0, 128.0]])
    savemat(tmp_path / "b" / "dataset" / psdb.TRAIN, {"Train": train["Train"]})
    with pytest.raises(UserError, match=r"the box \[5000.0, 10.0, 64.0, 128.0\] of p\d+ lies outside s\d+\.jpg"):
        data.load_dataset("psdb", tmp_path / "b")
    write_layout("psdb", tmp_path / "c", ids=4, seed=0)
    scene = str(train["Train"][0, 0][0, 0]["scene"][0, 0]["imname"].ravel()[0])
    (tmp_path / "c" / "dataset" / psdb.IMAGES / scene).unlink()
    with pytest.raises(UserError, match=f"names the scene {scene}, which is not in"):
        data.load_dataset("psdb", tmp_path / "c")


@pytest.mark.parametrize("name", SETS)
def test_data_check_compares_with_the_published_counts(name):
    published = PUBLISHED[name]
    ids, images = published["train_ids"], published.get("train_images", published["train_ids"] * 2)
    cams = published.get("cameras", 1)
    train = [Sample(f"{i}.jpg", i % ids, i % cams) for i in range(images)]
    assert "!" not in counts_table(ReidData(name, train, [], []))
    assert "!" in counts_table(ReidData(name, [s for s in train if s.pid], [], []))  # one identity short


def test_published_counts_follow_their_sources():
    assert PUBLISHED["prid"]["train_ids"] == 385 + 749 - 200 and PUBLISHED["prid"]["train_images"] == 385 + 749
    assert PUBLISHED["cuhk02"]["train_ids"] == 971 + 306 + 107 + 193 + 239 == PUBLISHED["cuhk02"]["train_images"] // 4
    assert PUBLISHED["viper"]["train_images"] == 2 * PUBLISHED["viper"]["train_ids"] == 1264


@pytest.mark.slow
def test_data_check_of_a_full_size_prid_shows_no_difference(tmp_path):
    """The synthetic PRID at 934 persons has the release's structure: 200 shared, 185 A-only, 549 B-only."""
    assert reidbench("data", "synth", "prid", tmp_path, "--ids", 934, cwd=tmp_path).returncode == 0
    check = reidbench("data", "check", "prid", tmp_path, "--cues", "parsing", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "!" not in check.stdout and "934    934" in check.stdout and "1,134     1,134" in check.stdout


def test_the_union_of_the_six_has_one_label_per_identity(roots):
    union = "+".join(SETS)
    training = load_training(union, None, lambda name: roots[name])
    sizes = {name: len({s.pid for s in data.load_dataset(name, roots[name]).train}) for name in SETS}
    assert training.num_classes == sum(sizes.values()) == len({s.pid for s in training.sets["train"]})
    assert {s.root for s in training.sets["train"]} == {str(roots[n]) for n in SETS}


def test_a_union_tests_only_on_members_with_a_test_split(tmp_path):
    spec = write_spec(tmp_path, "u", grid={"train_datasets": ["market1501+viper+prid"]})
    (cell,) = load_spec(spec).cells
    assert cell.test_datasets == ("market1501",)


def test_testing_on_a_training_only_set_is_a_spec_error(tmp_path):
    spec = write_spec(tmp_path, "t", grid={"train_datasets": ["market1501+viper"], "test_datasets": ["viper"]})
    with pytest.raises(UserError, match=r"t\.toml, line \d+: 'viper' has no test split"):
        load_spec(spec)
    spec = write_spec(tmp_path, "v", grid={"train_datasets": ["viper+prid"]})
    with pytest.raises(UserError, match=r"'viper\+prid' has no dataset with a test split .* test_datasets"):
        load_spec(spec)


def test_cuhk03_split_indices_are_integers_a_reader_can_index_with(tmp_path):
    write_layout("cuhk03", tmp_path, ids=6, seed=0)
    for kind in cuhk03.KINDS:
        split = loadmat(tmp_path / cuhk03.config_name(kind))
        filelist = split["filelist"].ravel()
        for key in ("train_idx", "query_idx", "gallery_idx"):
            index = split[key].ravel() - 1  # as torchreid's cuhk03.py does, then filelist[idx]
            assert index.dtype.kind in "iu", key
            assert len(filelist[index]) == len(index)


@pytest.mark.slow
def test_the_ten_set_union_trains_end_to_end(tmp_path):
    """SPReID on its 10-set union (synthetic), tested on the members with a test split, via `reidbench run`."""
    union = "market1501+dukemtmc+cuhk03-labeled-classic+cuhk01+3dpes+cuhk02+prid+psdb+shinpuhkan+viper"
    spec = write_spec(
        tmp_path,
        "union10",
        grid={"methods": ["spreid:wfg"], "train_datasets": [union]},  # its parsing cues load from every member
        train={"iterations": 6, "lr": 1e-3, "warmup": 0, "milestones": [4]},
        synthetic={"ids": 8},
    )
    run = reidbench("run", spec, "--store", "store", cwd=tmp_path, env=cache_env(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    from harness.store import Store

    rows = Store(tmp_path / "store").read().rows
    (cell,) = load_spec(spec).cells
    assert cell.test_datasets == ("market1501", "dukemtmc", "cuhk03-labeled-classic", "cuhk01")
    assert {r["test_dataset"] for r in rows} == set(cell.test_datasets)
    assert all(r["train_dataset"] == union and 0 <= r["mAP"] <= 1 for r in rows)
