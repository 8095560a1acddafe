"""The Parquet store: atomic one-file-per-row writes, skipped leftovers, cell state."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.store import PROFILE_SCHEMA, SCHEMA, Store


def make_row(**overrides):
    row = {name: None for name in SCHEMA.names}
    row.update(
        schema_version=1,
        grid="g",
        cell_id="abc123",
        method="baseline",
        variant="bnneck",
        backbone="resnet50",
        train_dataset="market1501",
        test_dataset="market1501",
        synthetic=True,
        seed=0,
        rerank=False,
        protocol="market",
        mAP=0.5,
        mINP=0.2,
        rank1=0.7,
        rank5=0.8,
        rank10=0.9,
        cmc=[0.7, 0.75],
        num_query=10,
        num_gallery=100,
        num_valid_queries=10,
        iterations=5,
        train_seconds=1.0,
        train_images_per_second=32.0,
        eval_seconds=0.5,
        world_size=2,
        executor="local",
        started_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        finished_at=datetime(2026, 1, 1, 0, 5, tzinfo=timezone.utc),
        config="{}",
    )
    row.update(overrides)
    return row


def test_row_round_trips(tmp_path):
    store = Store(tmp_path)
    path = store.write_row(make_row())
    assert path == tmp_path / "rows" / "abc123" / "market1501.plain.parquet"
    contents = store.read()
    assert contents.problems == []
    (row,) = contents.rows
    assert row["mAP"] == 0.5 and row["cmc"] == [0.7, 0.75] and row["synthetic"] is True
    assert row["started_at"] == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert store.has_row("abc123", "market1501", False) and not store.has_row("abc123", "market1501", True)


def test_same_identity_replaces_instead_of_duplicating(tmp_path):
    store = Store(tmp_path)
    store.write_row(make_row(mAP=0.1))
    store.write_row(make_row(mAP=0.3))
    store.write_row(make_row(rerank=True, mAP=0.4))
    rows = store.read().rows
    assert sorted((r["rerank"], r["mAP"]) for r in rows) == [(False, 0.3), (True, 0.4)]


def test_writes_leave_no_temporary_files(tmp_path):
    store = Store(tmp_path)
    store.write_row(make_row())
    store.write_state("abc123", "done")
    assert [p.name for p in tmp_path.rglob(".*")] == []


def test_partial_and_truncated_files_are_skipped_and_reported(tmp_path):
    store = Store(tmp_path)
    good = store.write_row(make_row(cell_id="good"))
    leftover = good.parent / ".market1501.plain.parquet.x1y2.tmp"
    leftover.write_bytes(good.read_bytes()[:100])
    truncated = store.write_row(make_row(cell_id="cut"))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    contents = store.read()
    assert [r["cell_id"] for r in contents.rows] == ["good"]
    assert len(contents.problems) == 2
    assert any(str(leftover) in p and "interrupted" in p for p in contents.problems)
    assert any(str(truncated) in p and "unreadable" in p for p in contents.problems)


def test_unknown_schema_version_is_refused_with_the_file_named(tmp_path):
    store = Store(tmp_path)
    path = store.write_row(make_row())
    table = pq.read_table(path)
    table = table.set_column(0, "schema_version", pa.array([99], pa.int32()))
    pq.write_table(table, path)
    contents = store.read()
    assert contents.rows == [] and str(path) in contents.problems[0] and "99" in contents.problems[0]


def test_a_row_must_match_the_schema(tmp_path):
    row = make_row()
    del row["mAP"]
    with pytest.raises(ValueError, match="missing \\['mAP'\\]"):
        Store(tmp_path).write_row(row)
    with pytest.raises(ValueError, match="unknown \\['extra'\\]"):
        Store(tmp_path).write_row(make_row(extra=1))


def test_cell_state(tmp_path):
    store = Store(tmp_path)
    assert store.read_state("c1") is None
    store.write_state("c1", "failed", reason="loss became non-finite at step 3")
    assert store.read_state("c1") == {"cell_id": "c1", "state": "failed", "reason": "loss became non-finite at step 3"}
    (store.cell_dir("c2")).mkdir(parents=True)
    (store.cell_dir("c2") / "state.json").write_text("{trunc")
    assert store.read_state("c2")["state"] == "unknown"


def make_profile(**overrides):
    row = {name: None for name in PROFILE_SCHEMA.names}
    row.update(
        schema_version=1,
        profile_id="p1",
        source="profile",
        method="baseline",
        variant="bnneck",
        backbone="resnet50",
        input_height=256,
        input_width=128,
        batch_size=64,
        world_size=1,
        precision="fp32",
        options="{}",
        train_steps=20,
        warmup_steps=5,
        train_images_per_second=100.0,
        train_images_per_second_per_device=100.0,
        infer_images_per_second=400.0,
        gpu_note="no NVIDIA GPU",
        device="cpu",
        executor="local",
        config="{}",
    )
    row.update(overrides)
    return row


def test_profile_rows_round_trip_apart_from_result_rows(tmp_path):
    store = Store(tmp_path)
    store.write_row(make_row())
    path = store.write_profile(make_profile(train_images_per_second=90.0))
    store.write_profile(make_profile(train_images_per_second=120.0))  # same id: replaced
    store.write_profile(make_profile(profile_id="p2", source="training", cell_id="abc123"))
    assert path == tmp_path / "profiles" / "p1.parquet"
    contents = store.read()
    assert [r["cell_id"] for r in contents.rows] == ["abc123"]
    assert [(p["profile_id"], p["train_images_per_second"]) for p in contents.profiles] == [
        ("p1", 120.0),
        ("p2", 100.0),
    ]
    assert contents.profiles[0]["sm_utilization"] is None and contents.problems == []


def test_profile_rows_are_checked_like_result_rows(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ValueError, match="profile row .*missing \\['method'\\]"):
        store.write_profile({k: v for k, v in make_profile().items() if k != "method"})
    path = store.write_profile(make_profile())
    table = pq.read_table(path).set_column(0, "schema_version", pa.array([7], pa.int32()))
    pq.write_table(table, path)
    contents = store.read()
    assert contents.profiles == [] and str(path) in contents.problems[0]


def test_rows_written_before_nodes_and_hosts_existed_read_them_as_null(tmp_path):
    store = Store(tmp_path)
    path = store.write_row(make_row(nodes=2, hosts=["node1", "node2"]))
    assert store.read().rows[0]["hosts"] == ["node1", "node2"] and store.read().rows[0]["nodes"] == 2
    old = pa.schema([f for f in SCHEMA if f.name not in ("nodes", "hosts")])
    row = {k: v for k, v in make_row().items() if k in old.names}
    pq.write_table(pa.Table.from_pylist([row], schema=old), path)  # as an older reidbench wrote it
    (read,) = store.read().rows
    assert read["nodes"] is None and read["hosts"] is None and read["mAP"] == 0.5
