"""Fixtures shared by the test modules; the functions behind them are in tests/helpers.py."""

from __future__ import annotations

import functools

import pytest

from tests.helpers import write_spec


@pytest.fixture
def make_spec(tmp_path):
    """`make_spec(name=None, *, file=None, **tables)`: a tiny grid spec in the test's tmp_path (see
    `tests.helpers.write_spec`: each keyword table is merged over the tiny template's)."""
    return functools.partial(write_spec, tmp_path)
