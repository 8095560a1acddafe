"""Errors that are the user's to fix: the CLI prints them as one paragraph and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input (a spec, a dataset, a flag): what is wrong, where, and what to do."""


def closest(name: str, valid: Iterable[str]) -> str:
    """A 'did you mean' hint followed by the list of valid names."""
    valid = sorted(valid)
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
    return f"{hint}Valid names: {', '.join(valid)}."
