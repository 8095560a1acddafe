"""`reidbench store compact`: merge the store's published row files into Parquet segments."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.compact import compact
from harness.errors import UserError
from harness.store import Store


def add_parser(sub, default_store: str) -> None:
    group = sub.add_parser(
        "store",
        help="maintain the result store (compact its row files into segments)",
        description="Result store maintenance.",
    )
    commands = group.add_subparsers(required=True, metavar="SUBCOMMAND")
    compact_parser = commands.add_parser(
        "compact",
        help="merge published row files into one Parquet segment (safe while runs go on)",
        description="Move every published set of row files into one new segment under STORE/rows/segments/ "
        "(and merge small segments into it), so that readers open a few files instead of one per row. "
        "Cells a live run holds are left alone; a crash at any moment loses and duplicates no row. "
        "`reidbench run` does it by itself once enough sets are loose (REIDBENCH_COMPACT_AFTER, default 64).",
    )
    compact_parser.add_argument(
        "--store", default=default_store, metavar="PATH", help=f"the result store (default: {default_store}/)"
    )
    compact_parser.set_defaults(command=_compact)


def _compact(args: argparse.Namespace) -> int:
    root = Path(args.store)
    if not (root / "rows").is_dir():
        raise UserError(f"{root}/ holds no result rows (no {root / 'rows'}/ folder); pass the store with --store PATH.")
    outcome = compact(Store(root))
    print(outcome.summary())
    for line in outcome.skipped[:20]:
        print(f"  left alone: {line}")
    if len(outcome.skipped) > 20:
        print(f"  ... and {len(outcome.skipped) - 20} more")
    return 1 if outcome.busy else 0
