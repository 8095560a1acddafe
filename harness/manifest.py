"""The submission manifest: what a cluster executor sent where, beside the store.

``<store>/manifest/<cell id>.json`` holds one cell's record: executor, job id, array index, log
paths, submission time, attempts, and the reason when it failed. One file per cell, so a running
job updates its own record without racing the others; each write is atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.store import Store, atomic_write, atomic_write_many


def path(store: Store, cell_id: str) -> Path:
    return store.root / "manifest" / f"{cell_id}.json"


def read(store: Store, cell_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(path(store, cell_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_all(store: Store) -> dict[str, dict[str, Any]]:
    folder = store.root / "manifest"
    records = (read(store, p.stem) for p in sorted(folder.glob("*.json"))) if folder.is_dir() else ()
    return {r["cell_id"]: r for r in records if r}


def update(store: Store, cell_id: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the cell's record (a new submission starts it afresh with `replace`)."""
    record = {**(read(store, cell_id) or {}), "cell_id": cell_id, **fields}
    text = json.dumps(record, indent=2, sort_keys=True, default=str)
    atomic_write(path(store, cell_id), lambda tmp: Path(tmp).write_text(text))
    return record


def replace_many(
    store: Store, records: dict[str, dict[str, Any]], also: list[tuple[Path, Any]] = ()
) -> list[dict[str, Any]]:
    """:func:`replace` for many cells (and ``also``, more (path, writer) pairs) in one batch of
    atomic writes with a single disk flush (store.atomic_write_many)."""
    out, writes = [], list(also)
    for cell_id, fields in records.items():
        record = {"cell_id": cell_id, "attempts": (read(store, cell_id) or {}).get("attempts", 0), **fields}
        text = json.dumps(record, indent=2, sort_keys=True, default=str)
        writes.append((path(store, cell_id), lambda tmp, text=text: Path(tmp).write_text(text)))
        out.append(record)
    atomic_write_many(writes)
    return out


def replace(store: Store, cell_id: str, **fields: Any) -> dict[str, Any]:
    """Start the cell's record afresh, keeping the attempt count of earlier submissions."""
    attempts = (read(store, cell_id) or {}).get("attempts", 0)
    path(store, cell_id).unlink(missing_ok=True)
    return update(store, cell_id, attempts=attempts, **fields)
