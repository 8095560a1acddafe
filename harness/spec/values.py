"""TOML values into typed dataclass fields, and the one line locator for error messages.

Shared by the spec parser and by `Cell.from_json`; nothing here knows a particular table.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, get_type_hints


class BadValue(ValueError):
    """A value that does not fit its field; `key` names the field for the error's line."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def coerce_dataclass(cls: type, raw: dict[str, Any]) -> Any:
    """Build a config dataclass from TOML values, checking each value against its field's type.

    A field typed as a tuple of dataclasses (``tuple[Phase, ...]``) takes a list of tables.
    """
    hints = get_type_hints(cls)
    return cls(**{key: _coerce_field(key, value, hints[key]) for key, value in raw.items()})


def _coerce_field(key: str, value: Any, hint: Any) -> Any:
    element = _dataclass_element(hint)
    if element is None:
        return coerce(key, value, hint)
    if not isinstance(value, (list, tuple)):
        raise BadValue(key, f"{key} must be a list of tables")
    return tuple(v if isinstance(v, element) else coerce_dataclass(element, v) for v in value)


def _dataclass_element(hint: Any) -> type | None:
    """D for a hint tuple[D, ...] whose D is a dataclass; else None."""
    if typing.get_origin(hint) is not tuple:
        return None
    args = typing.get_args(hint)
    return args[0] if args and dataclasses.is_dataclass(args[0]) else None


def freeze(value: Any) -> Any:
    """A TOML (or JSON) value with its lists as tuples, so that a Cell stays hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def option_type_problem(value: Any, default: Any) -> str | None:
    """What a method option should be, judged by its default's type; None when it fits."""
    kinds = (
        (bool, "true or false"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        ((list, tuple), "a list"),
    )
    for kind, words in kinds:
        if isinstance(default, kind):
            if kind is float:
                fits = type(value) in (int, float)
            elif kind is bool:
                fits = type(value) is bool
            else:
                fits = isinstance(value, kind) and not isinstance(value, bool)
            return None if fits else words
    return None


def coerce(key: str, value: Any, hint: Any) -> Any:
    """One TOML value checked against a field's type hint (int, float, str, bool, tuples, optionals)."""
    text = str(hint)
    optional = isinstance(hint, types.UnionType) or "None" in text
    if value is None and optional:
        return None
    if text.startswith("tuple"):
        inner = float if "float" in text else str if "str" in text else int
        if not isinstance(value, (list, tuple)):
            raise BadValue(key, f"{key} must be a list of {inner.__name__}s")
        return tuple(coerce(key, v, inner) for v in value)
    if hint is bool:
        if type(value) is not bool:
            raise BadValue(key, f"{key} must be true or false")
        return value
    if "float" in text and type(value) in (int, float):
        return float(value)
    if "int" in text and type(value) is int:
        return value
    if "str" in text and isinstance(value, str):
        return value
    wanted = {"float": "a number", "int": "an integer", "str": "a string"}
    kind = next((v for k, v in wanted.items() if k in text), text)
    raise BadValue(key, f"{key} must be {kind}, not {value!r}")


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def locate(
    lines: list[str], table: str, key: str | None = None, value: str | None = None, *, index: int | None = None
) -> int | None:
    """The 1-based line of `key` (or of `value` inside key's array) in `table`, for error messages.

    `table` is a dotted name ("train", "datasets.market1501", "" for the top level); with `index`,
    the index-th array table of that name (``[[combine]]``, ``[[train.phases]]``). Without a key,
    or when the key is not written, the table's header (an array table) or first line. tomllib
    reports no positions for valid TOML, so this scans the text: enough for the tables a spec uses.
    """
    current, counts = "", {}
    inside = table == "" and index is None
    header_line = first_line = key_line = None
    for number, line in enumerate(lines, start=1):
        match = _HEADER.match(line)
        if match:
            if key_line is not None or (index is not None and inside):
                break
            current = match.group(1).replace('"', "").replace(" ", "")
            counts[current] = counts.get(current, -1) + 1
            inside = current == table and (index is None or counts.get(current) == index)
            if inside:
                header_line = number
                if key is None:
                    return number
            elif table and key is not None and current == f"{table}.{key}":
                return number
            continue
        if not inside:
            continue
        first_line = first_line or number
        if key is not None and key_line is None and re.match(rf'^\s*"?{re.escape(key)}"?\s*=', line):
            key_line = number
        if key_line is not None and value is not None and (f'"{value}"' in line or f"'{value}'" in line):
            return number
    return key_line or (header_line if index is not None else first_line)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_slurm(slurm) -> tuple[str, str] | None:
    """(key, problem) of the first [slurm] value that is out of range or would break the sbatch
    script (a control character such as a newline starts a new shell line there); None when all fit.
    Shared by the spec parser and the command line's overrides."""
    for key in ("partition", "account", "qos", "gres", "constraint", "mem"):
        value = getattr(slurm, key)
        if value is not None and (not value or _CONTROL.search(value)):
            return key, f"{key} = {value!r} must be a non-empty value without control characters (newlines, tabs, NUL)"
    for key in ("extra",):
        for value in slurm.extra:
            if _CONTROL.search(value):
                return (
                    key,
                    f"the sbatch option {value!r} holds a control character (a newline, tab or NUL); one option per entry",
                )
    numbers = (
        ("time", slurm.time >= 1, "at least 1 (minutes per attempt)"),
        ("array_parallelism", slurm.array_parallelism >= 1, "at least 1"),
        ("max_requeues", slurm.max_requeues >= 0, "0 or more"),
        ("signal_delay_s", slurm.signal_delay_s >= 0, "0 or more"),
        ("cpus_per_task", slurm.cpus_per_task is None or slurm.cpus_per_task >= 1, "at least 1"),
    )
    for key, ok, what in numbers:
        if not ok:
            return key, f"{key} = {getattr(slurm, key)} must be {what}"
    return None
