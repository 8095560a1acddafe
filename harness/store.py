"""The result store: one Parquet file per result row, plus a small state file per cell.

Layout under the store's root (``results/`` by default):

    rows/<cell id>/<test dataset>.<plain|rerank>.parquet   one row each
    profiles/<profile id>.parquet                         one throughput/GPU profile row each
    cells/<cell id>/state.json                            running, done or failed (with the reason)
    cells/<cell id>/logs/                                 the processes' logs
    cells/<cell id>/embeddings/<test dataset>.npz         the test-time embeddings (for [[combine]])

A row's file name is its identity, so writing it again replaces it: a result is never duplicated.
Each file is written under a temporary name and renamed, so a crash never leaves a half row that
a reader takes for a whole one; the reader skips such leftovers and reports them.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1

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
        ("protocol", pa.string()),
        # metrics, as fractions in [0, 1]
        ("mAP", pa.float64()),
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
        ("executor", pa.string()),
        ("started_at", pa.timestamp("s", tz="UTC")),
        ("finished_at", pa.timestamp("s", tz="UTC")),
        ("config", pa.string()),
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
    problems: list[str] = field(default_factory=list)  # files that were skipped, and why


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- rows -----------------------------------------------------------------------------------

    def row_path(self, cell_id: str, test_dataset: str, rerank: bool) -> Path:
        return self.root / "rows" / cell_id / f"{test_dataset}.{'rerank' if rerank else 'plain'}.parquet"

    def has_row(self, cell_id: str, test_dataset: str, rerank: bool) -> bool:
        return self.row_path(cell_id, test_dataset, rerank).is_file()

    def write_row(self, row: dict[str, Any]) -> Path:
        """Write one result row atomically; the same identity overwrites, never duplicates."""
        path = self.row_path(row.get("cell_id"), row.get("test_dataset"), row.get("rerank"))
        return _write_one(path, row, SCHEMA, "result row")

    def read_row(self, cell_id: str, test_dataset: str, rerank: bool) -> dict[str, Any]:
        """One result row; FileNotFoundError if it is not in the store."""
        return pq.read_table(self.row_path(cell_id, test_dataset, rerank)).to_pylist()[0]

    # -- profile rows ---------------------------------------------------------------------------

    def profile_path(self, profile_id: str) -> Path:
        return self.root / "profiles" / f"{profile_id}.parquet"

    def write_profile(self, row: dict[str, Any]) -> Path:
        """Write one profile row (PROFILE_SCHEMA) atomically; the same profile id overwrites."""
        return _write_one(self.profile_path(row.get("profile_id")), row, PROFILE_SCHEMA, "profile row")

    def read(self) -> StoreContents:
        """Every complete result and profile row, and a note for each file that was skipped."""
        contents = StoreContents()
        for pattern, rows in (("rows/*/*", contents.rows), ("profiles/*", contents.profiles)):
            for path in sorted(self.root.glob(pattern)):
                rows.extend(_read_one(path, contents.problems))
        return contents

    # -- cell state -----------------------------------------------------------------------------

    def cell_dir(self, cell_id: str) -> Path:
        return self.root / "cells" / cell_id

    def write_state(self, cell_id: str, state: str, **details: Any) -> None:
        """Record a cell's state ('running', 'done' or 'failed', with e.g. a reason)."""
        record = {"cell_id": cell_id, "state": state, **details}
        text = json.dumps(record, indent=2, sort_keys=True, default=str)
        _atomic_write(self.cell_dir(cell_id) / "state.json", lambda tmp: Path(tmp).write_text(text))

    def read_state(self, cell_id: str) -> dict[str, Any] | None:
        path = self.cell_dir(cell_id) / "state.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return {"cell_id": cell_id, "state": "unknown", "reason": f"unreadable state file {path}"}

    # -- test-time embeddings -------------------------------------------------------------------

    def embeddings_path(self, cell_id: str, test_dataset: str) -> Path:
        return self.cell_dir(cell_id) / "embeddings" / f"{test_dataset}.npz"

    def write_embeddings(self, cell_id: str, test_dataset: str, embeddings: Embeddings) -> Path:
        """Keep a cell's query and gallery embeddings of one test dataset (atomically), so that
        evaluation-time combinations of cells can be computed later without the models."""
        path = self.embeddings_path(cell_id, test_dataset)
        arrays = {k: np.ascontiguousarray(getattr(embeddings, k)) for k in Embeddings.__dataclass_fields__ if k != "metric"}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez(f, metric=np.asarray(embeddings.metric), **arrays)

        _atomic_write(path, write)
        return path

    def read_embeddings(self, cell_id: str, test_dataset: str) -> Embeddings:
        """A cell's kept embeddings; FileNotFoundError if it kept none, ValueError if the file is damaged."""
        path = self.embeddings_path(cell_id, test_dataset)
        try:
            with np.load(path, allow_pickle=False) as f:
                return Embeddings(**{k: f[k] for k in Embeddings.__dataclass_fields__ if k != "metric"}, metric=str(f["metric"]))
        except FileNotFoundError:
            raise
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: unreadable embeddings file ({type(err).__name__}: {err})") from None


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


def _write_one(path: Path, row: dict[str, Any], schema: pa.Schema, what: str) -> Path:
    missing, extra = set(schema.names) - set(row), set(row) - set(schema.names)
    if missing or extra:
        raise ValueError(f"{what} does not match the schema: missing {sorted(missing)}, unknown {sorted(extra)}")
    table = pa.Table.from_pylist([row], schema=schema)
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def _read_one(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The rows of one file, or none with a note in `problems` saying why it was skipped."""
    if path.name.startswith("."):
        problems.append(f"{path}: partial write left by an interrupted run (ignored)")
        return []
    if path.suffix != ".parquet":
        return []
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        problems.append(f"{path}: unreadable, probably truncated (ignored): {err}")
        return []
    versions = set(table.column("schema_version").to_pylist()) if "schema_version" in table.column_names else {None}
    if versions != {SCHEMA_VERSION}:
        problems.append(
            f"{path}: schema version {sorted(versions, key=str)} is not {SCHEMA_VERSION}, the one this "
            f"reidbench reads (ignored); read it with the reidbench version that wrote it"
        )
        return []
    return table.to_pylist()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # the bytes reach the disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
