"""jobs/full.toml regenerates every published number that a store row can measure (scripts/coverage.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.report.mapping import identity
from harness.report.reference import reference_cells

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("coverage_script", ROOT / "scripts" / "coverage.py")
coverage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(coverage)


def measurable() -> list:
    return [(ref, found) for ref in reference_cells() if (found := identity(ref)) and found.method != "spreid-parsing"]


def test_full_toml_writes_a_row_for_every_measurable_published_number():
    have = coverage.written([ROOT / "jobs" / "full.toml"])
    missing = [
        f"{ref.paper} T{ref.table} {ref.method} {ref.metric}" for ref, found in measurable() if found not in have
    ]
    assert not missing, missing
    assert len(measurable()) == 714  # 712 in the tables, and DSA-reID's CUHK01 result without pre-training (its text)


def test_a_spec_left_out_leaves_its_tables_numbers_unwritten():
    have = coverage.written([ROOT / "jobs" / "spreid.toml"])
    assert {ref.table for ref, found in measurable() if ref.paper == "spreid" and found not in have} == {
        2,
        3,
        4,
        5,
        6,
    }  # Table 4 has its baseline row from spreid-baseline.toml
