"""Compaction of published row files into segments (harness/compact.py), and the readers over both.

The crash tests kill a real `python` process running the compaction (SIGKILL, at each named step
of harness.compact) and then check, with a fresh reader, that every published row is read exactly
once with its published run's values; and that the next compaction finishes the job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness import lease
from harness.compact import CRASH_ENV, STEPS, compact, loose_sets
from harness.runner import compact_if_due
from harness.store import SEGMENT_KEY, Store
from tests.test_store import make_row

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = [("market1501", False), ("market1501", True)]


def publish(store: Store, cell: str, run: str, mAP: float, method: str = "baseline") -> None:
    for rerank in (False, True):
        store.stage_row(make_row(schema_version=2, cell_id=cell, run_id=run, rerank=rerank, mAP=mAP, method=method))
    store.publish(cell, run)


def seen(root: Path) -> list[tuple]:
    """What a fresh reader sees: (cell, test set, re-ranked, run, mAP) for each row, in order."""
    contents = Store(root).read()
    assert not contents.problems, contents.problems
    return [(r["cell_id"], r["test_dataset"], r["rerank"], r["run_id"], r["mAP"]) for r in contents.rows]


def expected(values: dict[str, tuple[str, float]]) -> list[tuple]:
    return [(c, "market1501", rr, run, m) for c, (run, m) in sorted(values.items()) for rr in (False, True)]


def segments(root: Path) -> list[Path]:
    return sorted((root / "rows" / "segments").glob("*.parquet"))


def loose_files(root: Path) -> list[Path]:
    return [p for p in (root / "rows").rglob("*") if p.is_file() and "segments" not in p.parts]


def test_compaction_moves_published_sets_into_one_segment(tmp_path):
    store = Store(tmp_path)
    values = {f"c{i:02d}": ("r1", i / 100) for i in range(6)}
    for cell, (run, mAP) in values.items():
        publish(store, cell, run, mAP)
    before = Store(tmp_path).read().rows

    done = compact(Store(tmp_path))

    assert (done.sets, done.rows, done.segment) == (6, 12, segments(tmp_path)[0])
    assert loose_files(tmp_path) == []  # the row files and pointers are gone
    assert Store(tmp_path).read().rows == before  # the same rows, same order, same values
    listed = json.loads(pq.read_schema(done.segment).metadata[SEGMENT_KEY])
    assert sorted((s["cell_id"], s["run_id"]) for s in listed) == [(c, "r1") for c in sorted(values)]
    fresh = Store(tmp_path)
    assert fresh.published_run("c03") == "r1"  # the embeddings of the run stay found
    assert fresh.cell_rows("c03").complete(EXPECTED)
    assert fresh.read_row("c03", "market1501", True)["mAP"] == 0.03
    assert compact(Store(tmp_path)).summary() == "nothing to compact"


def test_readers_take_segments_loose_files_and_a_newer_published_run_together(tmp_path):
    store = Store(tmp_path)
    values = {f"c{i}": ("r1", i / 10) for i in range(4)}
    for cell, (run, mAP) in values.items():
        publish(store, cell, run, mAP)
    compact(Store(tmp_path))
    publish(store, "c1", "r2", 0.91)  # a rerun of a compacted cell: its new set wins
    publish(store, "c9", "r1", 0.99)  # a new cell, in row files only
    values.update(c1=("r2", 0.91), c9=("r1", 0.99))
    assert seen(tmp_path) == expected(values)
    assert Store(tmp_path).published_run("c1") == "r2"

    done = compact(Store(tmp_path))  # the small segment is merged into the new one, c1's old set dropped
    assert len(done.merged) == 1 and len(segments(tmp_path)) == 1
    assert seen(tmp_path) == expected(values)
    publish(store, "c1", "r3", 0.5)  # newer than the compacted r2
    compact(Store(tmp_path), small=0)  # two segments now, each with a set of c1: the newer wins
    values["c1"] = ("r3", 0.5)
    assert len(segments(tmp_path)) == 2
    assert seen(tmp_path) == expected(values)


def test_filters_reach_segments_and_row_files(tmp_path):
    store = Store(tmp_path)
    publish(store, "a1", "r1", 0.1, method="baseline")
    publish(store, "a2", "r1", 0.2, method="pcb")
    compact(Store(tmp_path))
    publish(store, "a3", "r1", 0.3, method="pcb")
    rows = Store(tmp_path).read(methods={"pcb"}).rows
    assert sorted({r["cell_id"] for r in rows}) == ["a2", "a3"] and len(rows) == 4
    assert Store(tmp_path).read(methods={"pcb"}, grids={"other"}).rows == []


def test_a_cell_held_by_a_live_run_is_left_alone(tmp_path):
    store = Store(tmp_path)
    publish(store, "busy", "r1", 0.1)
    publish(store, "free", "r1", 0.2)
    live = lease.Lease(store.cell_dir("busy"), "r2", "someone-else")
    assert live.try_acquire() is None  # this (live) process holds it
    try:
        done = compact(Store(tmp_path))
    finally:
        live.release()
    assert done.sets == 1 and done.skipped and done.skipped[0].startswith("busy: held by run r2")
    assert (tmp_path / "rows" / "busy" / "published.json").exists()
    assert not (tmp_path / "rows" / "free").exists()
    assert seen(tmp_path) == expected({"busy": ("r1", 0.1), "free": ("r1", 0.2)})
    assert lease.read(store.cell_dir("free")) is None  # the compaction gave its leases back


def test_a_damaged_segment_is_reported_and_not_fatal(tmp_path):
    store = Store(tmp_path)
    publish(store, "lost", "r1", 0.1)
    first = compact(Store(tmp_path)).segment
    publish(store, "kept", "r1", 0.2)
    compact(Store(tmp_path), small=0)
    first.write_bytes(first.read_bytes()[:100])  # truncated: its footer is gone

    contents = Store(tmp_path).read()
    assert [r["cell_id"] for r in contents.rows] == ["kept", "kept"]
    assert len(contents.problems) == 1 and str(first) in contents.problems[0]
    assert not Store(tmp_path).cell_rows("lost").complete(EXPECTED)  # recomputed by the next run
    publish(store, "kept2", "r1", 0.3)
    assert compact(Store(tmp_path)).sets == 1  # a damaged segment is left where it is, not merged
    assert first.exists()


def _crashing_compaction(root: Path, step: str) -> subprocess.CompletedProcess:
    code = (
        "import sys; from harness.compact import compact; from harness.store import Store; compact(Store(sys.argv[1]))"
    )
    env = {**os.environ, CRASH_ENV: step, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("step", STEPS)
def test_a_compaction_killed_at_any_step_loses_and_duplicates_no_row(tmp_path, step):
    store = Store(tmp_path)
    values = {f"old{i}": ("r1", i / 10) for i in range(3)}
    for cell, (run, mAP) in values.items():
        publish(store, cell, run, mAP)
    compact(Store(tmp_path))  # a small segment, merged by the next compaction ("merging")
    publish(store, "old1", "r2", 0.77)  # supersedes a compacted set
    values["old1"] = ("r2", 0.77)
    for i in range(4):
        publish(store, f"new{i}", "r1", 0.5 + i / 100)
        values[f"new{i}"] = ("r1", 0.5 + i / 100)
    assert seen(tmp_path) == expected(values)

    killed = _crashing_compaction(tmp_path, step)

    assert killed.returncode == -9, killed.stderr  # it died at that step
    assert seen(tmp_path) == expected(values)  # every row once, of its published run
    assert all(Store(tmp_path).cell_rows(c).complete(EXPECTED) for c in values)
    again = compact(Store(tmp_path))  # the dead compaction's leases are stale: this one goes on
    assert not again.skipped and not again.busy
    assert seen(tmp_path) == expected(values)
    assert loose_files(tmp_path) == [] and len(segments(tmp_path)) == 1
    assert not list((tmp_path / "rows" / "segments").glob(".*.tmp"))


def test_a_second_compaction_waits_for_none_and_does_nothing(tmp_path):
    import fcntl

    store = Store(tmp_path)
    publish(store, "c1", "r1", 0.1)
    (tmp_path / "rows" / "segments").mkdir(parents=True)
    with open(tmp_path / "rows" / "segments" / ".compact.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = compact(Store(tmp_path))
    assert done.busy and "another compaction" in done.summary()
    assert loose_sets(store) == 1


def test_a_run_compacts_once_enough_sets_are_loose(tmp_path, monkeypatch):
    store = Store(tmp_path)
    for i in range(3):
        publish(store, f"c{i}", "r1", 0.1)
    monkeypatch.setenv("REIDBENCH_COMPACT_AFTER", "4")
    assert compact_if_due(store, log=lambda m: None) is None
    publish(store, "c3", "r1", 0.1)
    said = []
    assert compact_if_due(store, log=said.append).sets == 4
    assert said and said[0].startswith("Result store: compacted 4 published set(s)")
    monkeypatch.setenv("REIDBENCH_COMPACT_AFTER", "0")  # off
    publish(store, "c9", "r1", 0.1)
    assert compact_if_due(store) is None


def test_store_compact_command(tmp_path):
    store = Store(tmp_path)
    publish(store, "c1", "r1", 0.1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "harness.cli", "store", "compact", "--store"]
    done = subprocess.run([*cli, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "compacted 1 published set(s)" in done.stdout
    wrong = subprocess.run([*cli, str(tmp_path / "nowhere")], env=env, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "holds no result rows" in wrong.stderr and "Traceback" not in wrong.stderr


def test_the_results_table_is_what_tabulate_writes(tmp_path, monkeypatch):
    """results.md of a big store is written without tabulate's per-cell type inference, byte for byte the same."""
    from tabulate import tabulate

    import harness.report as report

    rows = [
        make_row(cell_id=f"{i:012x}", seed=i, mAP=None if i == 3 else i / 7, train_images_per_second=None)
        for i in range(12)
    ]
    fast = [report.results_table(rows[:n]) for n in (0, 1, 12)]
    monkeypatch.setattr(
        report,
        "_github",
        lambda body, headers: tabulate(body, headers=headers, tablefmt="github", disable_numparse=True),
    )
    assert fast == [report.results_table(rows[:n]) for n in (0, 1, 12)]
