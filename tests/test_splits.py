"""Datasets of several published splits (CUHK03's classic 20): their names, cells, data and report.

The spec and report tests use the repository's SPReID Model-S spec with `splits = 3`; the data test
reads the synthetic CUHK03 release, whose split file holds 20 test sets as the real one does.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from harness import data
from harness.data.synthetic import synthetic_root
from harness.engine.rows import result_row
from harness.engine.train import TrainResult
from harness.errors import UserError
from harness.report.reference import TABLES
from harness.report.tables import build_table
from harness.spec import Resources, load_spec
from harness.splits import split_in, split_name, split_of, unsplit
from harness.store import Store
from tests.test_report_finetune import metrics

JOBS = Path(__file__).resolve().parent.parent / "jobs"
CLASSIC = "cuhk03-labeled-classic"


def test_split_names_round_trip_and_split_zero_is_the_datasets_own_name():
    assert split_name(CLASSIC, 0) == CLASSIC and split_name(CLASSIC, 19) == f"{CLASSIC}-split19"
    assert split_of(f"{CLASSIC}-split7") == (CLASSIC, 7) and split_of(CLASSIC) == (CLASSIC, 0)
    assert split_of(f"{CLASSIC}-split20") == (f"{CLASSIC}-split20", 0)  # the release has 0-19
    assert split_of("market1501-split3") == ("market1501-split3", 0)  # one split: no such name
    with pytest.raises(ValueError):
        split_name("market1501", 1)
    assert unsplit(f"market1501+{CLASSIC}-split4>{CLASSIC}-split4") == f"market1501+{CLASSIC}>{CLASSIC}"
    assert split_in(f"market1501+{CLASSIC}-split4", None, "market1501") == 4


def with_splits(tmp_path: Path, splits: int, source: str = "spreid-model-s.toml") -> Path:
    text = (JOBS / source).read_text().replace("[grid]\n", f"[grid]\nsplits = {splits}\n", 1)
    path = tmp_path / source
    path.write_text(text)
    return path


def test_a_grid_of_splits_has_one_cell_per_split_and_split_zero_keeps_its_id(tmp_path):
    (plain,) = load_spec(JOBS / "spreid-model-s.toml").cells
    cells = load_spec(with_splits(tmp_path, 3)).cells
    assert len(cells) == 3 and cells[0].id == plain.id
    for k, cell in enumerate(cells[1:], 1):
        name = f"{CLASSIC}-split{k}"
        assert name in cell.train_dataset.split("+") and CLASSIC not in cell.train_dataset.split("+")
        assert cell.test_datasets == ("market1501", name, "dukemtmc")
        assert cell.dataset(name).name == name
    assert len({c.id for c in cells}) == 3


@pytest.mark.parametrize(
    ("splits", "grid", "message"),
    [
        (21, None, "splits must be from 1 to 20"),
        (
            2,
            'train_datasets = ["market1501"]\ntest_datasets = ["market1501"]',
            "no dataset of the grid is published with several splits",
        ),
        (2, f'train_datasets = ["{CLASSIC}-split2"]\ntest_datasets = ["{CLASSIC}-split2"]', "name the dataset"),
    ],
)
def test_a_wrong_splits_key_says_what_to_do(tmp_path, splits, grid, message):
    path = with_splits(tmp_path, splits)
    if grid:
        text = path.read_text()
        start = text.index("train_datasets")
        end = text.index("\n", text.index("test_datasets")) + 1
        path.write_text(text[:start] + grid + "\n" + text[end:])
    with pytest.raises(UserError, match=message):
        load_spec(path)


def test_a_split_reads_its_own_hundred_test_persons(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    root = synthetic_root(CLASSIC, ids=16, seed=0)
    first, third = data.load_dataset(CLASSIC, root), data.load_dataset(f"{CLASSIC}-split3", root)
    assert data.protocol(f"{CLASSIC}-split3") == "cuhk03-classic"
    with h5py.File(next(Path(root).rglob("cuhk-03.mat")), "r") as mat:
        wanted = {
            int(pair) * 1000 + int(person)
            for pair, person in np.asarray(mat[mat["testsets"][()].ravel()[3]]).T.astype(int)
        }
    assert {s.pid for s in third.query} == wanted
    assert {s.pid for s in third.query} != {s.pid for s in first.query}
    assert not wanted & {s.pid for s in third.train}


def test_the_report_averages_a_number_over_its_splits_and_says_how_many(tmp_path):
    cells = load_spec(with_splits(tmp_path, 3)).cells
    store = Store(tmp_path / "store")
    trained = TrainResult(iterations=1, seconds=1.0, images_per_second=1.0, losses={})
    for k, cell in enumerate(cells):
        test = split_name(CLASSIC, k)
        run = f"run-{k}"
        store.stage_row(
            result_row(
                cell,
                Resources(),
                test_dataset=test,
                protocol="cuhk03-classic",
                synthetic=False,
                metrics=metrics(0.80 + 0.02 * k),
                rerank=False,
                num_query=100,
                num_gallery=100,
                result=trained,
                eval_seconds=0.1,
                device=torch.device("cpu"),
                world_size=1,
                executor="local",
                started=None,
                run_id=run,
                hosts=["localhost"],
                test_fingerprint=f"split-{k}",  # each split's test set is another copy of the files
                train_fingerprint=json.dumps({"split": k}),
            )
        )
        store.publish(cell.id, run)
    spec = next(t for t in TABLES if t.paper == "spreid" and t.number == 2)
    table = build_table(spec, store.read().rows)
    measured = [c for b in table.blocks for r in b.rows for c in r.cells if c.measure is not None]
    assert {c.published for c in measured} == {"81.78", "98.12"}  # Model-S on CUHK03: rank-1, rank-10
    for cell in measured:
        assert cell.measure.mean == pytest.approx(82.0) and cell.measure.splits == 3 and cell.measure.n == 1
        assert "the mean over 3 splits" in table.footnotes[cell.footnote - 1]
