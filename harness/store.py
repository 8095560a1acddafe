"""The result store: Parquet result rows published a cell at a time, and a small state file per cell.

Layout under the store's root (``results/`` by default):

    rows/<cell id>/published.json                      which run's rows are the cell's (see below)
    rows/<cell id>/<run id>/<test dataset>.<plain|rerank>.parquet   one row each
    profiles/<profile id>.parquet                      one throughput/GPU profile row each
    parsing/<model id>-<split>.parquet                 one human-parsing result (SPReID Table 1) each
    cells/<cell id>/state.json                         running, done or failed (with the reason)
    cells/<cell id>/lease.json                         which live run holds the cell (harness/lease.py)
    cells/<cell id>/logs/                              the processes' logs
    cells/<cell id>/metrics.jsonl                      the training curve: logged steps' loss terms and lr
    cells/<cell id>/embeddings/<run id>/<test dataset>.npz   the test-time embeddings (for [[combine]])
    cells/<cell id>/model.safetensors, model.json      the trained model, kept (harness.engine.artefact)
    cells/<cell id>/visrank/<test dataset>/            ranked lists: index.html and PNG grids

Every row and embeddings file carries the id of the run (attempt) that wrote it. A run writes its
rows into its own folder, where no reader looks, then publishes them all at once by replacing
``published.json`` (one atomic rename): a cell's rows are all of one run or none, and a crash
during a rerun (``--force``) leaves the previous set whole. Readers take a cell's rows only from
its published run, and only rows that are readable and say they belong to that cell and run; a
damaged one is reported, and the cell is not done until it is recomputed. A compaction may merge
whole published sets, keyed by (cell id, run id). Rows written before run ids (schema 1) lie in
``rows/<cell id>/`` itself and are read as one set while the cell has no ``published.json``.

Compaction (harness/compact.py) moves whole published sets into segment files,
``rows/segments/<time>-<uuid>.parquet``, whose Parquet metadata lists the (cell id, run id,
published_ns, row names) sets they hold; it then removes the sets' row files and ``published.json``.
A cell's rows are, in this order: its ``published.json`` run (read from a segment holding that run
if one does, else from its row files); else the newest set (``published_ns``) any segment holds;
else schema-1 row files. A segment is written whole before the row files it replaces are removed,
so a crash at any moment leaves every set readable once (a set held twice reads once).

Each file is written under a temporary name and renamed, so a crash never leaves a half file that
a reader takes for a whole one; leftovers are removed when a run next takes the cell (clean_cell).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.modes import as_created_file

SCHEMA_VERSION = 2  # 2: rows carry the run id that wrote them
READABLE_VERSIONS = (1, 2)  # schema-1 rows are read with a null run id
PROFILE_SCHEMA_VERSION = 1
PUBLISHED = "published.json"
SEGMENTS = "segments"  # rows/segments/: compacted sets, never a cell id (those are hex digits)
SEGMENT_KEY = b"reidbench.segment"  # the segment's Parquet metadata key: the JSON list of its sets

SCHEMA = pa.schema(
    [
        # identity
        ("schema_version", pa.int32()),
        ("grid", pa.string()),
        ("cell_id", pa.string()),
        ("method", pa.string()),
        ("variant", pa.string()),
        ("backbone", pa.string()),
        ("train_dataset", pa.string()),
        ("test_dataset", pa.string()),
        ("synthetic", pa.bool_()),
        ("seed", pa.int64()),
        ("rerank", pa.bool_()),
        (
            "rerank_distance",
            pa.string(),
        ),  # what re-ranking was given (harness.eval.score.rerank_metric); null for plain rows
        ("protocol", pa.string()),
        # metrics, as fractions in [0, 1]
        ("mAP", pa.float64()),  # mean over queries of the precision at each true match (torchreid, fast-reid)
        ("mAP_official", pa.float64()),  # the official Market-1501 code's AP (compute_AP.m), see harness.eval.metrics
        ("mINP", pa.float64()),
        ("rank1", pa.float64()),
        ("rank5", pa.float64()),
        ("rank10", pa.float64()),
        ("cmc", pa.list_(pa.float64())),
        ("num_query", pa.int64()),
        ("num_gallery", pa.int64()),
        ("num_valid_queries", pa.int64()),
        # training and evaluation figures
        ("iterations", pa.int64()),
        ("train_seconds", pa.float64()),
        ("train_images_per_second", pa.float64()),  # null when the cell trains no step
        ("eval_seconds", pa.float64()),
        # provenance
        ("git_sha", pa.string()),
        ("git_dirty", pa.bool_()),
        ("reidbench_version", pa.string()),
        ("torch_version", pa.string()),
        ("cuda_version", pa.string()),
        ("hostname", pa.string()),
        ("device", pa.string()),
        ("world_size", pa.int32()),
        ("nodes", pa.int32()),  # distinct nodes the ranks ran on (null in rows written before it was added)
        ("hosts", pa.list_(pa.string())),  # each rank's node, in rank order
        ("executor", pa.string()),
        ("started_at", pa.timestamp("s", tz="UTC")),
        ("finished_at", pa.timestamp("s", tz="UTC")),
        ("config", pa.string()),
        ("run_id", pa.string()),  # the run (attempt) that wrote the row; null in schema 1
        # added by issue 18 (read as null from older files)
        ("id_version", pa.int32()),  # harness.spec.ID_VERSION of the cell id (null: 1, rows written before issue 18)
        ("train_fingerprint", pa.string()),  # JSON: each training dataset's fingerprint (harness.data.fingerprint)
        ("test_fingerprint", pa.string()),  # JSON: the test dataset's fingerprint
        ("weights", pa.string()),  # null: trained by this cell; else where external weights came from (reidbench eval)
    ]
)


# A human-parsing row: SPReID's parsing model (`reidbench parsing eval --store`) scored on a LIP
# split, SPReID Table 1's metrics as fractions like every other metric. Its identity columns are a
# result row's, so a report looks it up as it looks up a cell's (method "spreid-parsing", variant its
# ASPP form, trained on "lip", tested on "lip-<split>", protocol "lip"); `cell_id` is the model's id
# (a hash of its file), in the place of a cell's.
PARSING_SCHEMA_VERSION = 1
PARSING_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("cell_id", pa.string()),
        ("method", pa.string()),
        ("variant", pa.string()),
        ("backbone", pa.string()),
        ("train_dataset", pa.string()),
        ("test_dataset", pa.string()),
        ("protocol", pa.string()),
        ("rerank", pa.bool_()),
        ("seed", pa.int64()),
        ("synthetic", pa.bool_()),
        ("overall_acc", pa.float64()),
        ("mean_acc", pa.float64()),
        ("mean_iou", pa.float64()),
        ("num_images", pa.int64()),
        ("input_height", pa.int32()),
        ("input_width", pa.int32()),
        ("config", pa.string()),  # JSON: the model file, its recipe, the LIP root
        ("train_fingerprint", pa.string()),
        ("test_fingerprint", pa.string()),
        ("weights", pa.string()),  # always null: a model reidbench trained
        ("git_sha", pa.string()),
        ("finished_at", pa.string()),
    ]
)


# A profile row: how fast one (method, variant, backbone) trains and infers on one device set-up,
# and how busy it keeps the GPUs. `reidbench profile` writes them (source "profile"), and so do
# training cells (source "training", with their cell id). The GPU columns are null without an
# NVIDIA GPU or NVML; `gpu_note` then says why.
PROFILE_SCHEMA = pa.schema(
    [
        # identity
        ("schema_version", pa.int32()),
        ("profile_id", pa.string()),  # hash of the identity columns: a rerun replaces its row
        ("source", pa.string()),  # "profile" | "training"
        ("cell_id", pa.string()),  # null for `reidbench profile`
        ("method", pa.string()),
        ("variant", pa.string()),
        ("backbone", pa.string()),
        ("input_height", pa.int32()),
        ("input_width", pa.int32()),
        ("batch_size", pa.int32()),  # images per step over all ranks
        ("world_size", pa.int32()),
        ("precision", pa.string()),  # "fp32" | "bf16" | "fp16"
        ("options", pa.string()),  # JSON of the speed options that were on (channels_last, compile, ...)
        # throughput, warm-up excluded, device synchronised
        ("train_steps", pa.int64()),
        ("warmup_steps", pa.int64()),
        ("train_images_per_second", pa.float64()),  # all ranks together
        ("train_images_per_second_per_device", pa.float64()),
        ("infer_images_per_second", pa.float64()),
        # GPU figures, from NVML sampled in the background (means over the measured steps)
        ("gpu_model", pa.string()),
        ("gpu_count", pa.int32()),
        ("peak_memory_bytes", pa.int64()),  # torch's peak allocated, max over ranks
        ("sm_utilization", pa.float64()),  # percent
        ("memory_utilization", pa.float64()),  # percent
        ("power_watts", pa.float64()),
        ("sm_clock_mhz", pa.float64()),
        ("memory_clock_mhz", pa.float64()),
        ("per_gpu", pa.string()),  # JSON list: the same means for each GPU
        ("gpu_note", pa.string()),  # why the GPU columns are null, if they are
        # provenance, as in result rows
        ("git_sha", pa.string()),
        ("git_dirty", pa.bool_()),
        ("reidbench_version", pa.string()),
        ("torch_version", pa.string()),
        ("cuda_version", pa.string()),
        ("hostname", pa.string()),
        ("device", pa.string()),
        ("executor", pa.string()),
        ("started_at", pa.timestamp("s", tz="UTC")),
        ("finished_at", pa.timestamp("s", tz="UTC")),
        ("config", pa.string()),
    ]
)


@dataclass
class StoreContents:
    rows: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    parsing: list[dict[str, Any]] = field(default_factory=list)  # PARSING_SCHEMA rows
    problems: list[str] = field(default_factory=list)  # files that were skipped, and why


@dataclass
class CellRows:
    """A cell's published rows: all from run `run_id` (None: schema-1 rows, or none published)."""

    run_id: str | None = None
    rows: dict[tuple[str, bool], dict[str, Any]] = field(default_factory=dict)  # (test dataset, rerank) -> row
    problems: list[str] = field(default_factory=list)  # damaged, foreign or missing files of the set

    def missing(self, expected: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
        return [key for key in expected if key not in self.rows]

    def complete(self, expected: list[tuple[str, bool]]) -> bool:
        """Every expected row is readable, of this cell and of one run, and nothing in the set is damaged."""
        return not self.problems and not self.missing(expected)


@dataclass(frozen=True)
class SegmentSet:
    """One published set that a segment holds (its Parquet metadata lists them)."""

    cell_id: str
    run_id: str
    published_ns: int  # when the run published it: of two compacted sets of a cell, the newer wins
    names: tuple[str, ...]  # the set's row names, as published.json listed them
    segment: str  # the file name under rows/segments/


@dataclass
class SegmentIndex:
    held: dict[tuple[str, str], SegmentSet] = field(default_factory=dict)  # (cell, run) -> the segment serving it
    newest: dict[str, SegmentSet] = field(default_factory=dict)  # cell -> its newest compacted set
    problems: list[str] = field(default_factory=list)  # damaged segments


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        # Per instance, refreshed whenever rows/segments/ lists other files: a segment is never
        # rewritten under its name (compaction writes new ones and removes old ones).
        self._sets: dict[str, list[SegmentSet] | str] = {}  # segment -> its sets, or why it is unreadable
        self._decoded: dict[str, dict[str, list[dict[str, Any]]] | str] = {}  # segment -> cell -> rows
        self._index: tuple[tuple[str, ...], SegmentIndex] | None = None

    # -- segments -------------------------------------------------------------------------------

    def segments_dir(self) -> Path:
        return self.root / "rows" / SEGMENTS

    def segment_index(self) -> SegmentIndex:
        """Which compacted set serves each (cell, run), each cell's newest compacted set, and the
        damaged segments; from the segments' footers alone (no row is read)."""
        folder = self.segments_dir()
        names = tuple(sorted(p.name for p in folder.glob("*.parquet"))) if folder.is_dir() else ()
        if self._index is not None and self._index[0] == names:
            return self._index[1]
        for gone in set(self._sets) - set(names):
            self._sets.pop(gone)
            self._decoded.pop(gone, None)
        index = SegmentIndex()
        for name in names:  # oldest first (names start with the time): a set held twice is served once
            if name not in self._sets:
                self._sets[name] = _segment_sets(folder / name)
            sets = self._sets[name]
            if isinstance(sets, str):
                index.problems.append(sets)
                continue
            for one in sets:
                one = index.held.setdefault((one.cell_id, one.run_id), one)
                best = index.newest.get(one.cell_id)
                if best is None or one.published_ns > best.published_ns:
                    index.newest[one.cell_id] = one
        self._index = (names, index)
        return index

    def segment_sets(self) -> dict[str, list[SegmentSet]]:
        """The readable segments and the sets each lists (a set held twice is in both)."""
        self.segment_index()
        return {name: sets for name, sets in self._sets.items() if not isinstance(sets, str)}

    def segment_rows(self, segment: str) -> dict[str, list[dict[str, Any]]] | str:
        """A segment's rows by cell (read once per instance), or why it cannot be read."""
        if segment not in self._decoded:
            problems: list[str] = []
            rows = _read_one(self.segments_dir() / segment, problems, READABLE_VERSIONS)
            by_cell: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                by_cell.setdefault(row["cell_id"], []).append(row)
            self._decoded[segment] = problems[0] if problems else by_cell
        return self._decoded[segment]

    def _from_segment(self, found: SegmentSet, out: CellRows) -> CellRows:
        rows = self.segment_rows(found.segment)
        path = self.segments_dir() / found.segment
        if isinstance(rows, str):
            out.problems.append(rows)
            return out
        for row in rows.get(found.cell_id, []):
            if row.get("run_id") == found.run_id:
                out.rows[(row.get("test_dataset"), row.get("rerank"))] = row
        have = {row_name(*key) for key in out.rows}
        out.problems.extend(
            f"{path}: the row {name} of cell {found.cell_id} run {found.run_id} is missing"
            for name in found.names
            if name not in have
        )
        return out

    # -- rows -----------------------------------------------------------------------------------

    def row_path(self, cell_id: str, test_dataset: str, rerank: bool, run_id: str | None = None) -> Path:
        """Where run `run_id` writes the row (None: the schema-1 place, rows/<cell id>/ itself)."""
        folder = self.root / "rows" / cell_id
        return (folder / run_id if run_id else folder) / row_name(test_dataset, rerank)

    def stage_row(self, row: dict[str, Any]) -> Path:
        """Write a row into its run's folder, where no reader looks until publish()."""
        if not row.get("run_id"):
            raise ValueError("a staged row needs its run_id")
        return _write_one(
            self.row_path(row["cell_id"], row["test_dataset"], row["rerank"], row["run_id"]), row, SCHEMA, "result row"
        )

    def publish(self, cell_id: str, run_id: str) -> list[str]:
        """Make the rows run `run_id` staged the cell's rows, all at once (one rename), then remove
        the rows and embeddings of the cell's other runs. Returns the published file names."""
        folder = self.root / "rows" / cell_id
        names = sorted(p.name for p in (folder / run_id).glob("*.parquet"))
        record = {
            "cell_id": cell_id,
            "run_id": run_id,
            "rows": names,
            "published_at": _now(),
            "published_ns": time.time_ns(),  # orders the cell's compacted sets: the newest wins
        }
        text = json.dumps(record, indent=2, sort_keys=True)
        atomic_write(folder / PUBLISHED, lambda tmp: Path(tmp).write_text(text))
        for old in [p for p in folder.iterdir() if p.is_dir() and p.name != run_id]:
            shutil.rmtree(old, ignore_errors=True)
        for old in folder.glob("*.parquet"):  # schema-1 rows of the cell
            old.unlink(missing_ok=True)
        embeddings = self.cell_dir(cell_id) / "embeddings"
        for old in embeddings.iterdir() if embeddings.is_dir() else ():
            if old.name != run_id:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        return names

    def published_run(self, cell_id: str) -> str | None:
        """The run whose rows are the cell's; None when none is published (or the record is damaged)."""
        try:
            return json.loads((self.root / "rows" / cell_id / PUBLISHED).read_text()).get("run_id")
        except FileNotFoundError:
            compacted = self.segment_index().newest.get(cell_id)
            return compacted.run_id if compacted else None
        except (OSError, ValueError, AttributeError):
            return None

    def write_row(self, row: dict[str, Any]) -> Path:
        """Write one result row atomically and publish it; the same identity overwrites, never duplicates.

        A row with a run id joins that run's published set (replacing another run's set); one
        without is written the schema-1 way. Cells publish their rows together (stage_row, publish).
        """
        row = {"run_id": None, **row}
        if not row["run_id"]:
            return _write_one(
                self.row_path(row.get("cell_id"), row.get("test_dataset"), row.get("rerank")), row, SCHEMA, "result row"
            )
        path = self.stage_row(row)
        self.publish(row["cell_id"], row["run_id"])
        return path

    def read_row(self, cell_id: str, test_dataset: str, rerank: bool) -> dict[str, Any]:
        """One published result row; FileNotFoundError if it is not in the store (or damaged)."""
        row = self.cell_rows(cell_id).rows.get((test_dataset, rerank))
        if row is None:
            raise FileNotFoundError(self.row_path(cell_id, test_dataset, rerank, self.published_run(cell_id)))
        return row

    def has_row(self, cell_id: str, test_dataset: str, rerank: bool) -> bool:
        return (test_dataset, rerank) in self.cell_rows(cell_id).rows

    def cell_rows(self, cell_id: str) -> CellRows:
        """The cell's published rows, each checked: readable, of a schema this reidbench reads, of
        this cell and of the published run. Anything else is a problem, never a row."""
        folder = self.root / "rows" / cell_id
        out = CellRows()
        pointer = folder / PUBLISHED
        index = self.segment_index()
        if pointer.exists():
            try:
                record = json.loads(pointer.read_text())
                out.run_id, names = str(record["run_id"]), list(record["rows"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                out.problems.append(f"{pointer}: unreadable ({type(err).__name__}: {err}); the cell is recomputed")
                return out
            compacted = index.held.get((cell_id, out.run_id))
            if compacted is not None:  # a compaction stopped before removing the set's files: the segment is whole
                return self._from_segment(compacted, out)
            paths = [folder / out.run_id / name for name in names]
        elif cell_id in index.newest:
            out.run_id = index.newest[cell_id].run_id
            return self._from_segment(index.newest[cell_id], out)
        else:
            paths = sorted(folder.glob("*")) if folder.is_dir() else []
        for path in paths:
            if path.is_dir():
                continue  # a run's staged rows, not published
            for row in _read_one(path, out.problems, READABLE_VERSIONS):
                key = (row.get("test_dataset"), row.get("rerank"))
                if row.get("cell_id") != cell_id:
                    out.problems.append(f"{path}: a row of cell {row.get('cell_id')!r}, not {cell_id!r} (ignored)")
                elif row.get("run_id") != out.run_id:
                    out.problems.append(
                        f"{path}: a row of run {row.get('run_id')!r}, not of the published run {out.run_id!r} (ignored)"
                    )
                elif path.name != row_name(*key):
                    out.problems.append(f"{path}: holds the row of {row_name(*key)} (ignored)")
                else:
                    out.rows[key] = row
        for path in paths:
            if not path.exists() and not path.name.startswith("."):
                out.problems.append(f"{path}: missing from the published rows of run {out.run_id}")
        return out

    # -- profile rows ---------------------------------------------------------------------------

    def profile_path(self, profile_id: str) -> Path:
        return self.root / "profiles" / f"{profile_id}.parquet"

    def write_profile(self, row: dict[str, Any]) -> Path:
        """Write one profile row (PROFILE_SCHEMA) atomically; the same profile id overwrites."""
        return _write_one(self.profile_path(row.get("profile_id")), row, PROFILE_SCHEMA, "profile row")

    def parsing_path(self, model_id: str, split: str) -> Path:
        return self.root / "parsing" / f"{model_id}-{split}.parquet"

    def write_parsing(self, row: dict[str, Any]) -> Path:
        """Write one human-parsing row (PARSING_SCHEMA) atomically; the same model and split overwrite."""
        split = row["test_dataset"].removeprefix("lip-")
        return _write_one(self.parsing_path(row["cell_id"], split), row, PARSING_SCHEMA, "parsing row")

    def read(self, *, methods: Iterable[str] | None = None, grids: Iterable[str] | None = None) -> StoreContents:
        """Every published result row (of the given methods and grids; default all) and every
        profile and human-parsing row, and a note for each file that was skipped.

        Cells with a ``published.json`` or schema-1 rows are read file by file (cell_rows); the
        compacted ones a segment at a time, with the filters pushed down to the Parquet reader.
        """
        contents = StoreContents()
        folder = self.root / "rows"
        keep = {
            "method": set(methods) if methods is not None else None,
            "grid": set(grids) if grids is not None else None,
        }
        index = self.segment_index()
        contents.problems.extend(index.problems)
        loose = set()
        try:
            with os.scandir(folder) as entries:  # the entries' types come with the listing: no stat per cell
                cells = [e.name for e in entries if e.is_dir() and e.name != SEGMENTS]
        except FileNotFoundError:
            cells = []
        for cell in cells:
            if cell not in index.newest or (folder / cell / PUBLISHED).exists():
                loose.add(cell)  # else compacted: what is left in its folder is a run's staged rows
        # One file open per row: threads overlap their latency (pyarrow and the file system release the GIL).
        with ThreadPoolExecutor(8) as pool:
            for found in pool.map(self.cell_rows, sorted(loose)):
                contents.rows.extend(
                    r for r in found.rows.values() if all(k is None or r[c] in k for c, k in keep.items())
                )
                contents.problems.extend(found.problems)
        by_segment: dict[str, list[str]] = {}
        for cell, found in index.newest.items():
            if cell not in loose:
                by_segment.setdefault(found.segment, []).append(cell)
        for segment, seg_cells in sorted(by_segment.items()):
            contents.rows.extend(self._read_segment(segment, seg_cells, keep, contents.problems))
        contents.rows.sort(key=lambda r: (r["cell_id"], str((r["test_dataset"], r["rerank"]))))
        profiles = self.read_profiles()
        contents.profiles, contents.problems = profiles.profiles, contents.problems + profiles.problems
        if keep["method"] is None or "spreid-parsing" in keep["method"]:
            for path in sorted(self.root.glob("parsing/*")):
                contents.parsing.extend(_read_one(path, contents.problems, (PARSING_SCHEMA_VERSION,), PARSING_SCHEMA))
        return contents

    def read_profiles(self) -> StoreContents:
        """Every profile row (no result row), and a note for each file that was skipped."""
        contents = StoreContents()
        for path in sorted(self.root.glob("profiles/*")):
            contents.profiles.extend(_read_one(path, contents.problems, (PROFILE_SCHEMA_VERSION,), PROFILE_SCHEMA))
        return contents

    def _read_segment(
        self, segment: str, cells: list[str], keep: dict[str, set[str] | None], problems: list[str]
    ) -> list[dict[str, Any]]:
        """The rows of `cells` in one segment (a segment holds one set per cell), filters pushed down."""
        path = self.segments_dir() / segment
        filters = [(column, "in", sorted(values)) for column, values in keep.items() if values is not None]
        try:
            table = pq.read_table(path, filters=filters or None)
        except (pa.ArrowException, OSError) as err:
            problems.append(f"{path}: unreadable segment, probably truncated (ignored): {err}")
            return []
        versions = set(pc.unique(table.column("schema_version")).to_pylist())
        if not versions <= set(READABLE_VERSIONS):
            problems.append(f"{path}: schema version {sorted(versions)} is not one this reidbench reads (ignored)")
            return []
        wanted = pc.is_in(table.column("cell_id"), value_set=pa.array(cells, pa.string()))
        if not pc.all(wanted).as_py():  # sets a newer one replaced (a filter copies the table: skipped when none)
            table = table.filter(wanted)
        rows = table.to_pylist()
        present = set(table.column_names)
        missing = dict.fromkeys(name for name in SCHEMA.names if name not in present)
        return [{**row, **missing} for row in rows] if missing else rows

    def clean_cell(self, cell_id: str) -> list[Path]:
        """Remove what interrupted runs of the cell left: temporary files, and rows and embeddings
        staged but never published. Call it only while holding the cell's lease (no live run
        writes there then). Returns what was removed."""
        removed = []
        published = self.published_run(cell_id)
        rows, cell = self.root / "rows" / cell_id, self.cell_dir(cell_id)
        for folder in (rows, cell / "embeddings"):
            for path in folder.iterdir() if folder.is_dir() else ():
                if path.is_dir() and path.name != published:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        for folder in (rows, cell, cell / "embeddings"):
            for path in folder.rglob(".*.tmp") if folder.is_dir() else ():
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # -- cell state -----------------------------------------------------------------------------

    def cell_dir(self, cell_id: str) -> Path:
        return self.root / "cells" / cell_id

    def write_state(self, cell_id: str, state: str, **details: Any) -> None:
        """Record a cell's state ('running', 'done' or 'failed', with e.g. a reason)."""
        atomic_write(*self.state_write(cell_id, state, **details))

    def state_write(self, cell_id: str, state: str, **details: Any) -> tuple[Path, Any]:
        """The (path, writer) of :meth:`write_state`, for :func:`atomic_write_many`."""
        record = {"cell_id": cell_id, "state": state, **details}
        text = json.dumps(record, indent=2, sort_keys=True, default=str)
        return self.cell_dir(cell_id) / "state.json", lambda tmp: Path(tmp).write_text(text)

    def read_state(self, cell_id: str) -> dict[str, Any] | None:
        path = self.cell_dir(cell_id) / "state.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return {"cell_id": cell_id, "state": "unknown", "reason": f"unreadable state file {path}"}

    # -- the kept model, its ranked lists -------------------------------------------------------

    def model_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "model.safetensors"

    def model_info_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "model.json"

    def has_model(self, cell_id: str) -> bool:
        """Both files of a kept model are there (model.json is written last, so it marks a whole model)."""
        return self.model_info_path(cell_id).is_file() and self.model_path(cell_id).is_file()

    def read_model_info(self, cell_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.model_info_path(cell_id).read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.model_info_path(cell_id)}: unreadable model description ({err})") from None

    def visrank_dir(self, cell_id: str, test_dataset: str) -> Path:
        return self.cell_dir(cell_id) / "visrank" / test_dataset

    def visrank_pages(self) -> list[tuple[str, str, Path]]:
        """(cell id, test dataset, index.html) of every ranked-list page in the store."""
        return [(p.parents[2].name, p.parent.name, p) for p in sorted(self.root.glob("cells/*/visrank/*/index.html"))]

    # -- training curves ------------------------------------------------------------------------

    def cells_with_metrics(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("cells/*/metrics.jsonl"))

    def metrics_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "metrics.jsonl"

    def append_metrics(self, cell_id: str, record: dict[str, Any]) -> None:
        """One line of a cell's training curve (a logged step's loss terms, averaged over ranks)."""
        path = self.metrics_path(cell_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read_metrics(self, cell_id: str) -> list[dict[str, Any]]:
        """The curve's records in order; a line cut short by a crash is skipped."""
        try:
            lines = self.metrics_path(cell_id).read_text().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def trim_metrics(self, cell_id: str, upto_step: int) -> None:
        """Keep the curve's records up to `upto_step`, where a run (re)starts: a resumed run goes on
        from its checkpoint's step, a fresh one (step 0) starts an empty curve."""
        kept = [r for r in self.read_metrics(cell_id) if r.get("step", 0) <= upto_step]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        atomic_write(self.metrics_path(cell_id), lambda tmp: Path(tmp).write_text(text))

    # -- test-time embeddings -------------------------------------------------------------------

    def embeddings_path(self, cell_id: str, test_dataset: str, run_id: str | None = None) -> Path:
        """Where run `run_id` keeps them; by default the published run's (schema 1: embeddings/ itself)."""
        run_id = run_id or self.published_run(cell_id)
        folder = self.cell_dir(cell_id) / "embeddings"
        return (folder / run_id if run_id else folder) / f"{test_dataset}.npz"

    def write_embeddings(
        self, cell_id: str, test_dataset: str, embeddings: Embeddings, run_id: str | None = None
    ) -> Path:
        """Keep a cell's query and gallery embeddings of one test dataset (atomically, stamped with
        the run that computed them), so that evaluation-time combinations of cells can be computed
        later without the models. They become the cell's when the run publishes its rows."""
        path = (
            self.embeddings_path(cell_id, test_dataset, run_id)
            if run_id
            else self.cell_dir(cell_id) / "embeddings" / f"{test_dataset}.npz"
        )
        arrays = {
            k: np.ascontiguousarray(getattr(embeddings, k)) for k in Embeddings.__dataclass_fields__ if k != "metric"
        }

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez(f, metric=np.asarray(embeddings.metric), run_id=np.asarray(run_id or ""), **arrays)

        atomic_write(path, write)
        return path

    def read_embeddings(self, cell_id: str, test_dataset: str) -> Embeddings:
        """A cell's kept embeddings, of the run whose rows are published; FileNotFoundError if it
        kept none, ValueError if the file is damaged or another run's."""
        run_id = self.published_run(cell_id)
        path = self.embeddings_path(cell_id, test_dataset, run_id)
        try:
            with np.load(path, allow_pickle=False) as f:
                stamp = str(f["run_id"]) if "run_id" in f.files else ""
                embeddings = Embeddings(
                    **{k: f[k] for k in Embeddings.__dataclass_fields__ if k != "metric"}, metric=str(f["metric"])
                )
        except FileNotFoundError:
            raise
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: unreadable embeddings file ({type(err).__name__}: {err})") from None
        if stamp != (run_id or ""):
            raise ValueError(f"{path}: embeddings of run {stamp or None!r}, not of the published run {run_id!r}")
        return embeddings


@dataclass(frozen=True, eq=False)  # arrays: no element-wise ==
class Embeddings:
    """One test dataset's embeddings as a cell computed them, in the dataset's query and gallery order."""

    query: np.ndarray  # (Nq, D) float32
    gallery: np.ndarray  # (Ng, D) float32
    query_pids: np.ndarray  # (Nq,) int64
    gallery_pids: np.ndarray
    query_camids: np.ndarray
    gallery_camids: np.ndarray
    metric: str = "euclidean"  # "euclidean", or "own" when the method compares them with its own distance


def _segment_sets(path: Path) -> list[SegmentSet] | str:
    """The sets a segment's metadata lists, or why it cannot be read (a damaged segment)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        return [
            SegmentSet(str(s["cell_id"]), str(s["run_id"]), int(s["published_ns"]), tuple(s["rows"]), path.name)
            for s in json.loads(metadata[SEGMENT_KEY])
        ]
    except (pa.ArrowException, OSError, KeyError, ValueError, TypeError) as err:
        return (
            f"{path}: unreadable segment ({type(err).__name__}: {err}); its rows are ignored, and the cells "
            "they were the only rows of are recomputed"
        )


def row_name(test_dataset: str, rerank: bool) -> str:
    return f"{test_dataset}.{'rerank' if rerank else 'plain'}.parquet"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_one(path: Path, row: dict[str, Any], schema: pa.Schema, what: str) -> Path:
    missing, extra = set(schema.names) - set(row), set(row) - set(schema.names)
    if missing or extra:
        raise ValueError(f"{what} does not match the schema: missing {sorted(missing)}, unknown {sorted(extra)}")
    table = pa.Table.from_pylist([row], schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def _read_one(
    path: Path, problems: list[str], versions_read: tuple[int, ...], schema: pa.Schema = SCHEMA
) -> list[dict[str, Any]]:
    """The rows of one file, or none with a note in `problems` saying why it was skipped. Columns
    added to the schema after the file was written (mAP_official, rerank_distance, run_id, nodes, hosts, and
    issue 18's id_version, train_fingerprint, test_fingerprint, weights) read as null."""
    if path.name.startswith("."):
        problems.append(
            f"{path}: partial write left by an interrupted run (ignored; removed when a run next takes the cell)"
        )
        return []
    if path.suffix != ".parquet":
        return []
    try:
        with pq.ParquetFile(path) as file:  # a sixth of pq.read_table's cost for a one-row file (no dataset set-up)
            table = file.read()
    except (pa.ArrowException, OSError) as err:
        problems.append(f"{path}: unreadable, probably truncated (ignored): {err}")
        return []
    versions = set(table.column("schema_version").to_pylist()) if "schema_version" in table.column_names else {None}
    if not versions or not versions <= set(versions_read):
        problems.append(
            f"{path}: schema version {sorted(versions, key=str)} is not one this reidbench reads "
            f"({', '.join(map(str, versions_read))}) (ignored); read it with the reidbench version that wrote it"
        )
        return []
    rows = table.to_pylist()
    present = set(table.column_names)
    missing = dict.fromkeys(name for name in schema.names if name not in present)
    return [{**row, **missing} for row in rows] if missing else rows


def atomic_write_many(writes: list[tuple[Path, Any]]) -> None:
    """:func:`atomic_write` for many files at the cost of one disk flush instead of one per file.

    Every file is written under its temporary name, then one ``os.sync()`` puts them all on disk,
    then each is renamed: as with one file, a name never points at bytes that are not on disk, and a
    crash leaves at most temporary files (which readers skip). Submitting a 2,000-cell grid writes
    4,000 small records; one fsync each took 4 ms on this machine (16 s in all).
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, write in writes:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            staged.append((tmp, path))
            write(tmp)
            as_created_file(tmp)  # the mode open() would give it, as atomic_write does
        os.sync()
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write) -> None:
    """Write `path` under a temporary name, fsync, rename; the file gets the mode open() would give it.

    An OSError names the path, and says how much space the disk has left when that is the reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # the bytes reach the disk before the name points at them
        as_created_file(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC, f"no space left on {disk_of(path)} to write {path} ({free_space(path)})"
            ) from None
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from None
        raise


def disk_of(path: Path) -> Path:
    """The nearest existing folder of `path` (whose file system a write goes to)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(disk_of(path)).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"
