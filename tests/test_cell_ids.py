"""Every spec in jobs/ keeps its cell and combination ids: a store written before a refactor stays valid.

tests/golden/cell_ids.json was taken before the layering move. A change that alters what defines a
cell on purpose (and says so: harness.spec.ID_VERSION, or a new identity key) regenerates it with
`python tests/test_cell_ids.py` and names the change in its commit.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest

from harness.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "cell_ids.json"


@functools.cache
def current_ids() -> dict[str, dict[str, list[str]]]:
    out = {}
    for path in sorted((ROOT / "jobs").glob("*.toml")):
        spec = load_spec(path)
        out[path.name] = {
            "cells": sorted(c.id for c in spec.cells),
            "combinations": sorted(c.id for c in spec.combinations),
        }
    return out


@pytest.mark.parametrize("spec", sorted(p.name for p in (ROOT / "jobs").glob("*.toml")))
def test_spec_keeps_its_ids(spec):
    golden = json.loads(GOLDEN.read_text())
    assert spec in golden, f"jobs/{spec} is new: add its ids with `python tests/test_cell_ids.py`"
    assert current_ids()[spec] == golden[spec], (
        f"the cell or combination ids of jobs/{spec} changed; if that is meant (the identity of a cell changed), "
        f"regenerate {GOLDEN.relative_to(ROOT)} with `python tests/test_cell_ids.py` and say why in the commit"
    )


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(current_ids(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
