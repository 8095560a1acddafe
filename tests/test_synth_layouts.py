"""Every layout's synthetic writer: parses with its reader, is deterministic by seed, has every cue."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from harness import data
from harness.data.cues import CUES, check_files
from harness.data.synthetic.layouts import LAYOUTS, write_layout
from harness.data.synthetic.render import Scene

READS = {
    "market1501": ["market1501"],
    "dukemtmc": ["dukemtmc"],
    "cuhk01": ["cuhk01"],
    "msmt17": ["msmt17"],
    "msmt17-v2": ["msmt17"],
    "occluded-reid": ["occluded-reid"],
    "folder": ["folder", "crowd-reid"],
    "cuhk03": ["cuhk03-labeled", "cuhk03-detected", "cuhk03-labeled-classic", "cuhk03-detected-classic"],
    "lip": [],
    "3dpes": ["3dpes"],
    "cuhk02": ["cuhk02"],
    "prid": ["prid"],
    "psdb": ["psdb"],
    "shinpuhkan": ["shinpuhkan"],
    "viper": ["viper"],
}  # lip: human parsing, no re-ID dataset: tests/test_parsing.py reads it


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "cuhk03-extracted" not in p.parts):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_every_layout_has_a_writer_and_every_dataset_a_layout():
    assert set(READS) == set(LAYOUTS)
    assert {name for names in READS.values() for name in names} == set(data.dataset_names())


@pytest.mark.parametrize("layout", sorted(layout for layout in LAYOUTS if READS[layout]))
def test_synthetic_layout_parses_with_every_cue(tmp_path, layout):
    write_layout(layout, tmp_path, ids=8, seed=1)
    for name in READS[layout]:
        d = data.load_dataset(name, tmp_path)
        if not data.has_test_split(name):  # SPReID's training-only sets (tests/test_spreid_sets.py)
            assert d.train and not d.query and not d.gallery
            assert check_files(d.train, tmp_path, CUES) == []
            continue
        assert d.query and d.gallery and (d.train or name == "occluded-reid")
        if name != "msmt17":  # MSMT17 numbers its test persons from 0 again, as published
            assert not {s.pid for s in d.train} & {s.pid for s in d.query}
        query_ids, gallery_ids = {s.pid for s in d.query}, {s.pid for s in d.gallery}
        assert query_ids <= gallery_ids, "every query has its identity in the gallery"
        assert check_files(d.train + d.query + d.gallery, tmp_path, CUES) == []


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for layout in ("cuhk03", "msmt17", "psdb"):
        a, b, c = (tmp_path / f"{layout}-{k}" for k in "abc")
        for root, seed in ((a, 4), (b, 4), (c, 5)):
            write_layout(layout, root, ids=6, seed=seed)
        assert digest(a) == digest(b) != digest(c)


def test_occluded_reid_is_tiff_and_its_occluders_hide_the_person(tmp_path):
    write_layout("occluded-reid", tmp_path, ids=4, seed=0)
    d = data.load_dataset("occluded-reid", tmp_path)
    assert Image.open(d.query[0].path).format == "TIFF" and Image.open(d.gallery[0].path).format == "TIFF"
    scene = Scene(0, 2)
    for pid in range(1, 30):  # the same shot with and without the occluder the occluded split always gets
        (hidden,), (whole,) = scene.shots(pid, 0, 1, occlusion=1.0, heavy=True), scene.shots(pid, 0, 1, occlusion=0.0)
        assert (hidden.mask <= whole.mask).all() and hidden.mask.sum() < whole.mask.sum()
