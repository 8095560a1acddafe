"""Named cue sources: cues/<cue>@<source>/ beside the default cues/<cue>/, chosen per spec with
[train] cue_sources, read by the loader under the cue's own name (harness/data/cues.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.data import load_dataset, loader
from harness.data.cues import cue_path, cue_refs, files_of, split_ref
from harness.errors import UserError
from harness.spec import load_spec
from tests.helpers import write_spec


def test_references_name_a_cue_and_its_source():
    assert split_ref("parsing@spreid") == ("parsing", "spreid") and split_ref("parsing") == ("parsing", None)
    assert cue_refs(("parsing", "saliency"), {"parsing": "spreid"}) == ("parsing@spreid", "saliency")
    assert files_of("densepose-crops@dp") == "densepose@dp"  # a derived cue reads its source cue's files, same source


def test_the_loader_reads_the_named_source_and_hands_the_cue_by_its_name(tmp_path):
    assert main(["data", "synth", "cuhk01", str(tmp_path), "--ids", "4"]) == 0
    shutil.copytree(tmp_path / "cues" / "parsing", tmp_path / "cues" / "parsing@spreid")
    sample = load_dataset("cuhk01", tmp_path).query[0]
    other = cue_path(tmp_path, "parsing@spreid", sample.cue_key)

    with Image.open(other) as labels:
        blank = np.zeros((labels.height, labels.width), np.uint8)  # all background in the spreid source only
    Image.fromarray(blank).save(other)
    dataset = loader.ImageDataset(
        [sample], loader.test_transform((64, 32)), cues=("parsing@spreid",), cue_root=tmp_path
    )
    default = loader.ImageDataset([sample], loader.test_transform((64, 32)), cues=("parsing",), cue_root=tmp_path)
    cues, plain = dataset[0][-1], default[0][-1]
    assert set(cues) == set(plain) == {"parsing"}
    assert float(cues["parsing"].sum()) == 0.0 and float(plain["parsing"].sum()) > 0  # each from its own folder


def test_a_spec_picks_the_source_and_only_then_the_cell_id_changes(tmp_path):
    plain = load_spec(write_spec(tmp_path, "a", grid={"methods": ["spreid:wfg"]})).cells[0]
    named = load_spec(
        write_spec(
            tmp_path, "a", file="b", grid={"methods": ["spreid:wfg"]}, train={"cue_sources": {"parsing": "spreid"}}
        )
    ).cells[0]
    assert plain.train.cue_sources == () and "cue_sources" not in plain.identity()["train"]
    assert named.train.cue_sources == (("parsing", "spreid"),) and named.id != plain.id
    # synthetic data has one exact map per cue, which stands for every source
    assert named.cue_sources() == {} and named.dataset("market1501").synthetic


@pytest.mark.parametrize(
    "sources,expected",
    [
        ({"parse": "spreid"}, "unknown cue 'parse'; did you mean .*'parsing'"),
        ({"parsing": "Bad/Name"}, "names no valid source"),
    ],
)
def test_bad_cue_sources_are_user_errors_with_the_line(tmp_path, sources, expected):
    path = write_spec(tmp_path, grid={"methods": ["spreid:wfg"]}, train={"cue_sources": sources})
    with pytest.raises(UserError, match=expected) as err:
        load_spec(path)
    assert str(path) in str(err.value) and "line" in str(err.value)
