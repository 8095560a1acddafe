"""The trained model as an artefact, without training: model.safetensors + model.json, the errors
for missing, damaged or misfitting weights and for missing cue maps, dataset fingerprints, curves,
version-1 rows, and what the report and `reidbench status` make of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from harness.cli import main
from harness.data import load_dataset
from harness.data.fingerprint import fingerprint
from harness.engine import artefact
from harness.errors import UserError
from harness.report.tables import build_table
from harness.spec import load_spec
from harness.store import SCHEMA, Store
from methods import create_model
from tests.test_report import cell_of as table_cell
from tests.test_report import result_row, spec, store_with

SPEC = """
[grid]
name = "kept"
methods = ["{method}"]
backbones = ["resnet18"]
train_datasets = ["market1501"]

[train]
input_size = [64, 32]
iterations = 2
eval_batch_size = 16
num_workers = 0

[synthetic]
ids = 8

[method_options.{name}]
pretrained = false
"""


def kept(tmp_path: Path, method: str = "baseline"):
    """A cell of a tiny spec whose (untrained) model is saved in the store as a finished cell would."""
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(method=method, name=method.partition(":")[0]))
    (cell,) = load_spec(path).cells
    torch.manual_seed(0)
    model = create_model(cell.method, num_classes=4, **cell.model_kwargs()).eval()
    store = Store(tmp_path / "store")
    info = artefact.describe(
        cell,
        model,
        num_classes=4,
        input_size=(64, 32),
        trained={"iterations": 2, "seconds": 1.0, "images_per_second": 8.0},
        train_fingerprint=None,
    )
    artefact.save(store, cell.id, model, info)
    return store, cell, model


def test_a_kept_model_round_trips_and_says_what_it_is(tmp_path):
    store, cell, model = kept(tmp_path)
    again, info = artefact.load(store, cell.id)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    assert (info["method"], info["variant"], info["backbone"], info["num_classes"]) == (
        "baseline",
        "bnneck",
        "resnet18",
        4,
    )
    assert info["embedding_dim"] == 512 and info["input_size"] == [64, 32] and info["test_cues"] == []
    assert (
        info["cell_id"] == cell.id
        and info["id_version"] == 2
        and "run_id" in info
        and info["options"]["pretrained"] is False
    )
    assert store.model_path(cell.id).read_bytes()[:8] != b"PK\x03\x04"  # safetensors, not a pickled zip


def _eval(tmp_path, store, prefix, *extra):
    return main(["eval", prefix, "--test", "market1501", "--store", str(store.root), "--device", "cpu", *extra])


def test_missing_or_damaged_weights_are_named_with_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    store, cell, _ = kept(tmp_path)
    path = store.model_path(cell.id)
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    assert _eval(tmp_path, store, cell.id) == 2
    err = capsys.readouterr().err
    assert f"{path} is damaged or not a safetensors file" in err and "Traceback" not in err
    path.unlink()
    assert _eval(tmp_path, store, cell.id) == 2
    assert f"{path} does not exist" in capsys.readouterr().err
    assert not (store.root / "rows").exists()


def test_weights_that_do_not_fit_name_the_first_key_and_both_shapes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    store, cell, _ = kept(tmp_path)
    assert (
        main(
            [
                "eval",
                "--weights",
                str(store.model_path(cell.id)),
                "--method",
                "baseline",
                "--backbone",
                "resnet50",
                "--test",
                "market1501",
                "--store",
                str(tmp_path / "other"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "does not fit baseline:bnneck on resnet50: backbone.layer1.0.conv1.weight has shape (64, 64, 3, 3) in the file "
        "but (64, 64, 1, 1) in the model" in err
    )
    assert not (tmp_path / "other").exists()


def test_a_test_set_without_the_cue_maps_the_model_needs_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    store, cell, _ = kept(tmp_path, "spreid:wfg")  # SPReID parses its test images
    root = tmp_path / "data"
    assert main(["data", "synth", "dukemtmc", str(root), "--ids", "8"]) == 0
    shutil.rmtree(root / "cues" / "parsing")
    capsys.readouterr()
    assert main(["eval", cell.id, "--test", "dukemtmc", "--data", f"dukemtmc={root}", "--store", str(store.root)]) == 2
    err = capsys.readouterr().err
    assert f"test dataset dukemtmc has none: {root / 'cues' / 'parsing'} does not exist" in err
    assert not (store.root / "rows").exists()


def test_fingerprints_tell_msmt17_v1_from_v2_and_a_changed_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    assert main(["data", "synth", "msmt17", str(v1), "--ids", "8"]) == 0
    assert main(["data", "synth", "msmt17-v2", str(v2), "--ids", "8"]) == 0
    one, two = fingerprint(load_dataset("msmt17", v1), v1), fingerprint(load_dataset("msmt17", v2), v2)
    assert one["version"] == "V1" and two["version"] == "V2" and one["query"] != two["query"]
    market = tmp_path / "m"
    assert main(["data", "synth", "market1501", str(market), "--ids", "8"]) == 0
    before = fingerprint(load_dataset("market1501", market), market)
    moved = tmp_path / "elsewhere"
    shutil.copytree(market, moved)
    assert fingerprint(load_dataset("market1501", moved), moved) == before  # where it lies does not count
    victim = next((moved / "Market-1501-v15.09.15" / "query").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    after = fingerprint(load_dataset("market1501", moved), moved)
    assert after["query"] != before["query"] and after["train"] == before["train"]


def test_the_report_refuses_to_average_seeds_measured_on_different_copies(tmp_path):
    rows = [
        result_row(seed=0, rank1=0.8, synthetic=False, test_fingerprint='{"query":"aaa"}'),
        result_row(seed=1, rank1=0.9, synthetic=False, test_fingerprint='{"query":"bbb"}'),
    ]
    table = build_table(spec("ssp-reid", 3), Store(store_with(tmp_path, rows)).read().rows)
    cell = table_cell(table, "ResNet", "Market-1501", "rank1")
    assert cell.measure is None
    note = table.footnotes[cell.footnote - 1]
    assert "different copies of test dataset market1501" in note and '{"query":"aaa"}' in note and "seed(s) 1" in note
    same = [dict(r, test_fingerprint='{"query":"aaa"}') for r in rows]
    table = build_table(spec("ssp-reid", 3), Store(store_with(tmp_path / "b", same)).read().rows)
    assert table_cell(table, "ResNet", "Market-1501", "rank1").measure.n == 2


def test_rows_of_external_weights_never_count_in_the_paper_tables(tmp_path):
    rows = [result_row(seed=0, rank1=0.8, synthetic=False, weights='{"path": "/zoo/model.pth"}')]
    table = build_table(spec("ssp-reid", 3), Store(store_with(tmp_path, rows)).read().rows)
    assert table_cell(table, "ResNet", "Market-1501", "rank1").measure is None and table.measured == 0


def test_version_1_rows_stay_readable_and_status_names_them(tmp_path, capsys):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(method="baseline", name="baseline"))
    (cell,) = load_spec(path).cells
    old = result_row("baseline", "bnneck", "resnet18", seed=0)  # written by reidbench before id version 2
    old["schema_version"], old["cell_id"] = 1, "0123456789ab"
    store = Store(tmp_path / "store")
    version_1 = pa.schema(
        [f for f in SCHEMA if f.name not in ("id_version", "train_fingerprint", "test_fingerprint", "weights")]
    )
    path_1 = store.row_path(old["cell_id"], "market1501", False)
    path_1.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{k: old[k] for k in version_1.names}], schema=version_1), path_1)
    (row,) = store.read().rows
    assert row["id_version"] is None and row["test_fingerprint"] is None  # read as null: id version 1
    assert main(["status", str(path), "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert f"{cell.id}" in out and "older rows of this experiment: cell 0123456789ab (id version 1)" in out
    assert "1 older cell(s) of this grid in the store have ids of an older id version" in out


def test_a_missing_kept_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="has no kept model"):
        artefact.read_info(Store(tmp_path), "abc")
