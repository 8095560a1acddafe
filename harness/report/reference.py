"""The papers' published numbers and how each of their results tables is laid out: package data.

`reference/paper_results.csv` holds every number of every results table of the papers, one row per
cell in the order the paper prints them, with the store identity that measures it (the `store_*`
columns; empty for a competitor's number or one reidbench does not measure) and whether the
number is `uncertain` (`reference/caveats.md` explains those cells). `reference/papers.toml`
names the papers, in the order reports list them, and lays out each results table: its title,
blocks, column order and backbone column. A new paper's tables are rows of the one and entries of
the other; no code changes.
"""

from __future__ import annotations

import csv
import io
import tomllib
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources

# The CSV's columns; `store_*` spell the measuring cell as the store does (see `mapping`).
STORE_COLUMNS = (
    "store_method",
    "store_variant",
    "store_backbone",
    "store_train_dataset",
    "store_test_dataset",
    "store_protocol",
)
CSV_COLUMNS = (
    "paper",
    "table",
    "method",
    "variant",
    "backbone",
    "train_dataset",
    "test_dataset",
    "protocol",
    "rerank",
    "metric",
    "value",
    "uncertain",
    *STORE_COLUMNS,
    "note",
)
# The store's metric columns a published number can stand beside (LIP parsing accuracies have none).
METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")
PARSING_METRICS = ("overall_acc", "mean_acc", "mean_iou")  # SPReID Table 1, the store's parsing rows
_BLOCK_BY = (None, "test_dataset", "train_dataset")


@dataclass(frozen=True)
class RefCell:
    """One published number, as the CSV spells it (value kept as printed, in percent)."""

    paper: str
    table: int
    method: str
    variant: str
    backbone: str
    train_dataset: str
    test_dataset: str
    protocol: str
    rerank: bool
    metric: str
    value: str
    uncertain: bool  # garbled extraction, inferred placement or a paper inconsistency: a footnote in every report
    store_method: str  # "" where no store cell measures this number
    store_variant: str
    store_backbone: str
    store_train_dataset: str
    store_test_dataset: str
    store_protocol: str
    note: str


@dataclass(frozen=True)
class TableSpec:
    """How a paper prints one table: its title, blocks, column order and whether it has a backbone column."""

    paper: str
    number: int
    title: str
    block_by: str | None = None  # "test_dataset" | "train_dataset": one block per value
    dataset_order: tuple[str, ...] = ()  # column groups, as "dataset/protocol"; default: first seen
    metric_order: tuple[str, ...] = ()  # metrics inside a group; default: first seen
    show_backbone: bool = False


def parse_papers(text: str) -> tuple[dict[str, str], tuple[TableSpec, ...]]:
    """papers.toml's titles by paper, in its order, and every table layout; a ValueError naming the
    entry for a key or value the layout does not know."""
    titles, tables = {}, []
    keys = {f.name for f in fields(TableSpec)} - {"paper"}
    for paper, entry in tomllib.loads(text).items():
        if not isinstance(entry, dict) or set(entry) - {"title", "tables"} or "title" not in entry:
            raise ValueError(f"papers.toml, [{paper}]: a paper has a title and [[{paper}.tables]], nothing else")
        titles[paper] = entry["title"]
        for layout in entry.get("tables", []):
            where = f"papers.toml, [[{paper}.tables]] number = {layout.get('number')}"
            if unknown := sorted(set(layout) - keys):
                raise ValueError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(keys))}")
            if layout.get("block_by") not in _BLOCK_BY:
                raise ValueError(f"{where}: block_by must be test_dataset or train_dataset")
            tables.append(TableSpec(paper, **{k: tuple(v) if isinstance(v, list) else v for k, v in layout.items()}))
    return titles, tuple(tables)


def parse_cells(text: str) -> tuple[RefCell, ...]:
    """Every row of a paper_results.csv; a ValueError naming the line of a row that does not hold together."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise ValueError(f"paper_results.csv: the columns must be {', '.join(CSV_COLUMNS)}")
    cells = []
    for r in reader:
        where = f"paper_results.csv, line {reader.line_num}"
        for flag in ("rerank", "uncertain"):
            if r[flag] not in ("true", "false"):
                raise ValueError(f"{where}: {flag} must be true or false, not {r[flag]!r}")
        store = [r[c] for c in STORE_COLUMNS]
        if any(store) and not all(store):
            raise ValueError(
                f"{where}: fill every one of {', '.join(STORE_COLUMNS)}, or none (no store cell measures it)"
            )
        measurable = PARSING_METRICS if r["store_method"] == "spreid-parsing" else METRICS
        if any(store) and r["metric"] not in measurable:
            raise ValueError(
                f"{where}: metric {r['metric']!r} is not a store column ({', '.join(measurable)}), "
                f"so no store cell can measure it; leave the store_* columns empty"
            )
        values = {**r, "table": int(r["table"]), "rerank": r["rerank"] == "true", "uncertain": r["uncertain"] == "true"}
        cells.append(RefCell(**values))
    return tuple(cells)


def _read(name: str) -> str:
    return resources.files("harness.report").joinpath(f"reference/{name}").read_text(encoding="utf-8")


PAPER_TITLES, TABLES = parse_papers(_read("papers.toml"))
PAPERS = tuple(PAPER_TITLES)


@cache
def reference_cells() -> tuple[RefCell, ...]:
    """Every published number, in the CSV's order (the papers' order)."""
    return parse_cells(_read("paper_results.csv"))


def caveats_text() -> str:
    return _read("caveats.md")


def table_specs(paper: str) -> list[TableSpec]:
    return [t for t in TABLES if t.paper == paper]
