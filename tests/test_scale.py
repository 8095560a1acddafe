"""Big grids: pre-flight and submission records that do not grow with a per-cell fixed cost."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from harness import manifest
from harness.spec import load_spec
from harness.store import Store, atomic_write_many

SMOKE = Path(__file__).resolve().parent.parent / "jobs" / "smoke.toml"


def test_cell_id_is_computed_once_and_still_follows_the_fields():
    cell = load_spec(SMOKE).cells[0]
    assert cell.id is cell.id  # cached
    other = dataclasses.replace(cell, seed=cell.seed + 1)
    assert other.id != cell.id and len(other.id) == 12


def test_atomic_write_many_writes_all_or_leaves_only_temporaries(tmp_path):
    paths = [tmp_path / "a" / f"{i}.json" for i in range(5)]
    atomic_write_many([(p, lambda tmp, i=i: Path(tmp).write_text(str(i))) for i, p in enumerate(paths)])
    assert [p.read_text() for p in paths] == [str(i) for i in range(5)]
    # the mode open() would give them under the caller's umask, as atomic_write does (a group store)
    old = os.umask(0o002)
    try:
        atomic_write_many([(tmp_path / "c" / "g.json", lambda tmp: Path(tmp).write_text("g"))])
    finally:
        os.umask(old)
    assert (tmp_path / "c" / "g.json").stat().st_mode & 0o777 == 0o664

    def boom(tmp):
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_many(
            [(tmp_path / "b" / "x.json", lambda tmp: Path(tmp).write_text("x")), (tmp_path / "b" / "y.json", boom)]
        )
    assert os.listdir(tmp_path / "b") == []  # nothing renamed, no temporary left


def test_replace_many_keeps_attempts_like_replace(tmp_path):
    store = Store(tmp_path)
    manifest.update(store, "c1", attempts=2, state="failed")
    state = store.state_write("c1", "submitted", job_id="7_0")
    records = manifest.replace_many(
        store, {"c1": {"state": "submitted", "job_id": "7_0"}, "c2": {"state": "submitted"}}, [state]
    )
    assert [r["attempts"] for r in records] == [2, 0]
    assert json.loads((tmp_path / "manifest" / "c1.json").read_text())["job_id"] == "7_0"
    assert "reason" not in manifest.read(store, "c1")  # a fresh record, as replace() makes
    assert store.read_state("c1")["state"] == "submitted"
