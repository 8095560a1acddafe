"""Compaction: whole published sets of row files merged into one Parquet segment, crash-safe.

One file per row stays the write path (a cell publishes its rows with one rename, harness/store.py);
but a store of 100,000 row files costs a file open per row to read (42 s for `reidbench report` over
20,000 rows, measured in issue 19), and far more on a cluster's shared file system. Compaction
moves published sets into ``rows/segments/<time>-<uuid>.parquet``, keyed by (cell id, run id):

1. it takes the store-wide lock (``rows/segments/.compact.lock``, flock), then each cell's lease
   (harness/lease.py): a cell a live run holds is left alone, and no run takes a cell meanwhile;
   only whole, undamaged published sets move;
2. it writes the segment (its Parquet metadata lists the sets it holds, store.SEGMENT_KEY) under a
   temporary name, fsyncs it, renames it into place and fsyncs the folder. Before the rename readers
   see the row files only; after it the segment serves each set it holds (store.Store.cell_rows);
3. it removes each set's row files, then ``published.json``, then the emptied folders. A crash
   midway leaves some sets with files and pointer: the segment still serves them, whole, and the
   next compaction finishes their removal;
4. segments of fewer than `small` rows are merged into the new one with the sets readers would
   still take from them (a set superseded by a newer published run is dropped), and removed last:
   until then a set held twice is read once.

So at any moment every published row is read exactly once. `reidbench run` compacts once enough
sets are loose (AUTO_AFTER); `reidbench store compact` does it at any time.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness import lease
from harness.modes import as_created_file
from harness.store import PUBLISHED, SCHEMA, SEGMENT_KEY, SEGMENTS, SegmentSet, Store

SMALL = 20_000  # rows: a segment smaller than this is merged into the next one
AUTO_AFTER = 64  # loose published sets after which `reidbench run` compacts (REIDBENCH_COMPACT_AFTER)
CRASH_ENV = "REIDBENCH_COMPACT_CRASH"  # tests: the process kills itself (SIGKILL) at the named step
THREADS = 8  # file opens in flight while reading and removing row files
STEPS = ("written", "renamed", "removing", "removed", "merging")


@dataclass
class Compaction:
    """What one compaction did."""

    segment: Path | None = None  # the segment written (None: nothing to compact)
    sets: int = 0  # published sets moved from row files
    rows: int = 0  # rows in the new segment
    finished: int = 0  # sets an interrupted compaction had already moved, whose row files were removed now
    merged: list[str] = field(default_factory=list)  # small segments merged into the new one and removed
    skipped: list[str] = field(default_factory=list)  # cells left alone, and why
    busy: bool = False  # another compaction held the store's lock: nothing was done

    def summary(self) -> str:
        if self.busy:
            return "another compaction is running on this store; nothing done"
        if self.segment is None and not self.finished:
            return "nothing to compact" + (f" ({len(self.skipped)} cell(s) left alone)" if self.skipped else "")
        merged = f", {len(self.merged)} small segment(s) merged into it" if self.merged else ""
        where = f"into {self.segment}" if self.segment else "(no new segment)"
        return (
            f"compacted {self.sets} published set(s) {where}: {self.rows} row(s){merged}"
            + (
                f"; finished removing {self.finished} set(s) an interrupted compaction had moved"
                if self.finished
                else ""
            )
            + (f"; left {len(self.skipped)} cell(s) alone (held by live runs or damaged)" if self.skipped else "")
        )


def loose_sets(store: Store) -> int:
    """How many cells have a published set in row files (what a compaction would move)."""
    folder = store.root / "rows"
    try:
        with os.scandir(folder) as entries:
            cells = [e.name for e in entries if e.is_dir() and e.name != SEGMENTS]
    except FileNotFoundError:
        return 0
    return sum((folder / c / PUBLISHED).exists() for c in cells)


def auto_after() -> int:
    return int(os.environ.get("REIDBENCH_COMPACT_AFTER", AUTO_AFTER))


def compact(store: Store, *, small: int = SMALL) -> Compaction:
    """Move the store's published sets into one new segment (see the module's doc)."""
    out = Compaction()
    folder = store.segments_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".compact.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            out.busy = True
            return out
        for left in folder.glob(".*.tmp"):  # a segment an interrupted compaction never renamed
            left.unlink(missing_ok=True)
        held: list[lease.Lease] = []
        try:
            _compact(store, out, held, small)
        finally:
            for one in held:
                one.release()
    return out


def _compact(store: Store, out: Compaction, held: list[lease.Lease], small: int) -> None:
    index = store.segment_index()
    rows_dir, token = store.root / "rows", uuid.uuid4().hex[:12]
    new_sets: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    finish: list[tuple[str, str]] = []  # (cell, run) whose row files go once the segment is in place
    with os.scandir(rows_dir) as entries:
        cells = sorted(e.name for e in entries if e.is_dir() and e.name != SEGMENTS)
    # Reading the row files is the compaction's cost, in file opens: threads overlap their latency
    # (pyarrow and the file system release the GIL), more so on a cluster's shared file system.
    with ThreadPoolExecutor(THREADS) as pool:
        plans = list(pool.map(lambda cell: _prepare(store, cell, token, index), cells))
    for cell, (what, taken, detail) in zip(cells, plans):
        if taken is not None:
            held.append(taken)
        if what == "skip":
            if detail:
                out.skipped.append(detail)
        elif what == "finish":  # an interrupted compaction moved the set already
            finish.append((cell, detail))
            out.finished += 1
        else:
            found, record = detail
            finish.append((cell, found.run_id))
            new_sets.append(
                {
                    "cell_id": cell,
                    "run_id": found.run_id,
                    "published_ns": int(record["published_ns"]),
                    "rows": sorted(record["rows"]),
                }
            )
            rows.extend(found.rows[key] for key in sorted(found.rows, key=str))
    out.sets = len(new_sets)
    merged = _merge_small(store, index, {s["cell_id"] for s in new_sets}, small, new_sets, rows)
    if new_sets:
        out.segment = _write_segment(store, new_sets, rows)
        out.rows = len(rows)
    _step("renamed")
    middle = len(finish) // 2
    with ThreadPoolExecutor(THREADS) as pool:
        list(
            pool.map(
                lambda i: _remove_set(rows_dir / finish[i][0], finish[i][1], midway=i == middle), range(len(finish))
            )
        )
    _step("removed")
    if out.segment is not None:
        for name in merged:
            (store.segments_dir() / name).unlink(missing_ok=True)
            out.merged.append(name)
            _step("merging")


def _prepare(store: Store, cell: str, token: str, index) -> tuple[str, lease.Lease | None, Any]:
    """What to do with one cell's folder, with its lease taken where it is touched: ("skip", lease
    or None, why or None), ("finish", lease, run id: remove the files of a set already compacted)
    or ("move", lease, (its CellRows, its published.json record))."""
    folder = store.root / "rows" / cell
    pointer, compacted = folder / PUBLISHED, index.newest.get(cell)
    if not pointer.exists() and (compacted is None or not (folder / compacted.run_id).exists()):
        return "skip", None, None  # schema-1 rows, or a run's staged rows: left to the runs
    taken = lease.Lease(store.cell_dir(cell), f"compact-{token}", f"compact-{token}", purpose="compaction")
    holder = taken.try_acquire()
    if holder is not None:
        return "skip", None, f"{cell}: held by {holder.describe()}"
    if not pointer.exists():  # an interrupted compaction removed the pointer, not the folder
        return "finish", taken, compacted.run_id
    found = store.cell_rows(cell)
    if found.problems or not found.rows or found.run_id is None:
        return "skip", taken, f"{cell}: {'; '.join(found.problems[:1]) or 'no rows published'}"
    if (cell, found.run_id) in index.held:
        return "finish", taken, found.run_id
    record = json.loads(pointer.read_text())
    record["published_ns"] = record.get("published_ns") or pointer.stat().st_mtime_ns  # before published_ns
    return "move", taken, (found, record)


def _merge_small(
    store: Store, index, fresh: set[str], small: int, new_sets: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> list[str]:
    """Add to the new segment the sets readers would take from segments under `small` rows; the
    names of those segments (removed once the new one is in place)."""
    sizes: dict[str, list[SegmentSet]] = {}
    for one in index.held.values():
        sizes.setdefault(one.segment, []).append(one)
    for name in store.segment_sets():  # segments all of whose sets another segment serves
        sizes.setdefault(name, [])
    candidates = {name: sets for name, sets in sizes.items() if sum(len(s.names) for s in sets) < small}
    if not new_sets and len(candidates) < 2:  # a lone small segment: rewriting it gains nothing
        return []
    merged = []
    for segment, sets in sorted(candidates.items()):
        decoded = store.segment_rows(segment)
        if isinstance(decoded, str):
            continue  # a damaged segment stays, reported by every read
        for one in sets:
            if one.cell_id in fresh or _served(store, index, one) is not one:
                continue  # superseded: a newer set of the cell is published or compacted
            new_sets.append(
                {
                    "cell_id": one.cell_id,
                    "run_id": one.run_id,
                    "published_ns": one.published_ns,
                    "rows": list(one.names),
                }
            )
            rows.extend(r for r in decoded.get(one.cell_id, []) if r.get("run_id") == one.run_id)
        merged.append(segment)
    return merged  # a set two of them held (a compaction stopped, then ran again) went in once


def _served(store: Store, index, one: SegmentSet) -> SegmentSet | None:
    """The compacted set readers take for the cell of `one` (None: its row files, or none)."""
    run = store.published_run(one.cell_id) if (store.root / "rows" / one.cell_id / PUBLISHED).exists() else None
    if run is not None:
        return index.held.get((one.cell_id, run))
    return index.newest.get(one.cell_id)


def _write_segment(store: Store, sets: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Path:
    folder = store.segments_dir()
    path = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{path.name}.tmp"
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata({SEGMENT_KEY: json.dumps(sets)})
    try:
        pq.write_table(table, tmp, row_group_size=16_384)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        as_created_file(tmp)
        _step("written")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename reaches the disk before any row file it replaces is removed
    finally:
        os.close(fd)
    return path


def _remove_set(folder: Path, run: str, midway: bool = False) -> None:
    """The row files of a compacted set, then its pointer, then the emptied folders. (`midway`:
    the crash tests' step "removing" is after this set's first row file.)"""
    for path in sorted((folder / run).glob("*.parquet")):
        path.unlink(missing_ok=True)
        if midway:
            _step("removing")
    pointer = folder / PUBLISHED
    try:
        if json.loads(pointer.read_text()).get("run_id") == run:
            pointer.unlink()
    except (OSError, ValueError, AttributeError):
        pass
    shutil.rmtree(folder / run, ignore_errors=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # another run's staged rows are there: clean_cell removes them when a run takes the cell


def _step(name: str) -> None:
    """Where the crash tests kill a compaction: the process dies at once, as with a power cut."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
