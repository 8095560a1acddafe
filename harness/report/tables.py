"""A paper's table with the store's measurements beside each published number.

The model is format-free: renderers (Markdown, LaTeX, HTML, CSV) only lay it out. Numbers are in
percent, as the papers print them; the store keeps fractions.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.report.mapping import (
    AP_NAMES,
    Identity,
    identity,
    paper_ap,
    row_split,
    row_train_dataset,
    store_metric,
)
from harness.report.reference import RefCell, TableSpec, reference_cells
from harness.splits import unsplit

DATASET_NAMES = {
    "market1501": "Market-1501",
    "dukemtmc": "DukeMTMC-reID",
    "msmt17": "MSMT17",
    "cuhk01": "CUHK01",
    "cuhk03": "CUHK03",
    "crowdreid": "Crowd-REID",
    "occludedreid": "Occluded-REID",
    "lip": "LIP",
    "cuhk03-labeled": "CUHK03 (labeled)",
    "cuhk03-detected": "CUHK03 (detected)",
    "crowd-reid": "Crowd-REID",
    "occluded-reid": "Occluded-REID",
}
METRIC_NAMES = {
    "mAP": "mAP",
    "rank1": "R1",
    "rank5": "R5",
    "rank10": "R10",
    "mINP": "mINP",
    "overall_acc": "overall acc.",
    "mean_acc": "mean acc.",
    "mean_iou": "mean IoU",
}
_ORDER = (
    "market1501",
    "dukemtmc",
    "cuhk03-labeled",
    "cuhk03-detected",
    "cuhk01",
    "msmt17",
    "crowd-reid",
    "occluded-reid",
)


@dataclass(frozen=True)
class Measure:
    """A measured number in percent: the mean over seeds, their sample std (None for one seed) and count."""

    mean: float
    std: float | None
    n: int
    synthetic: bool
    splits: int = 1  # the dataset splits (harness/splits.py) each seed's number averages


@dataclass(frozen=True)
class Cell:
    published: str | None  # as printed; None where the paper prints nothing
    identity: Identity | None  # None: a competitor's number, or data reidbench does not have
    measure: Measure | None
    footnote: int | None  # index into Table.footnotes (from 1)

    @property
    def decimals(self) -> int:
        return max(1, len(self.published.partition(".")[2])) if self.published else 1

    @property
    def diff(self) -> float | None:
        return None if self.measure is None or self.published is None else self.measure.mean - float(self.published)


@dataclass(frozen=True)
class Column:
    group: str  # e.g. "Market-1501", "Market-1501 → Crowd-REID"
    metric: str  # the CSV's metric name


@dataclass(frozen=True)
class Row:
    label: str
    backbone: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Block:
    title: str | None
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class PaperTable:
    spec: TableSpec
    blocks: tuple[Block, ...]
    footnotes: tuple[str, ...]
    published: int  # cells with a published number
    measurable: int  # ... that reidbench can measure
    measured: int  # ... that the store has measured
    synthetic: int  # measured cells whose numbers come from synthetic data
    hidden_synthetic: int  # cells where real measurements replaced synthetic ones
    rerank_distances: tuple[str, ...] = ()  # what the measured re-ranked rows were re-ranked on (rows' rerank_distance)

    @property
    def name(self) -> str:
        return f"{self.spec.paper} Table {self.spec.number}"

    def summary(self) -> str:
        """The caption's sentence on what was measured."""
        if not self.measurable:
            text = f"reidbench measures nothing in this table: published values only ({self.published} cells)."
        elif not self.measured:
            text = (
                f"No measurements in the store for this table: published values only "
                f"({self.measurable} of its {self.published} cells are ones reidbench can measure)."
            )
        else:
            text = f"{self.measured} of {self.measurable} measurable cells measured ({self.published} published cells in all)."
        if self.synthetic:
            text += (
                f" {self.synthetic} measured cell(s) come from SYNTHETIC data, marked 'syn': "
                f"they test the pipeline, not the method on the real dataset."
            )
        if self.hidden_synthetic:
            text += f" {self.hidden_synthetic} cell(s) have real measurements as well as synthetic ones; the real ones are shown."
        return text

    def ap_note(self) -> str | None:
        """The caption's sentence on the AP that the mAP columns compare (the paper's own definition);
        None for a table without mAP."""
        if not any(col.metric == "mAP" for block in self.blocks for col in block.columns):
            return None
        column, evidence = paper_ap(self.spec.paper)
        return f"mAP, published and ours, is {AP_NAMES[column]}: {evidence}."

    def rerank_note(self) -> str | None:
        """The caption's sentence on what the measured re-ranked rows were re-ranked on; None without such rows."""
        if not self.rerank_distances:
            return None
        names = {
            "squared-euclidean": "squared Euclidean distances (as torchreid hands them to the reference code)",
            "euclidean": "plain Euclidean distances",
            "own": "the method's own distance",
            "unknown": "plain Euclidean distances (rows written before rerank_distance was recorded)",
        }
        used = "; some on ".join(names.get(d, d) for d in self.rerank_distances)
        return f"Re-ranked rows: k-reciprocal re-ranking (k1 = 20, k2 = 6, lambda = 0.3) on {used}."


def dataset_order(name: str) -> tuple[int, str]:
    """A sort key: the store's datasets in the papers' usual order, then any other by name."""
    return (_ORDER.index(name) if name in _ORDER else len(_ORDER), name)


def dataset_label(dataset: str, protocol: str = "") -> str:
    name = DATASET_NAMES.get(dataset, dataset)
    if dataset == "cuhk03" and protocol.startswith("cuhk03-"):
        name = f"CUHK03 ({protocol.removeprefix('cuhk03-')})"
    return name


def index_rows(rows: Iterable[dict[str, Any]]) -> dict[Identity, list[dict[str, Any]]]:
    """Store rows grouped by the identity a reference cell looks them up by. Rows of external
    weights (`reidbench eval --weights`) are no training run of reidbench's: never in a paper table."""
    index: dict[Identity, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("weights"):
            continue
        key = Identity(  # the splits of one dataset (harness/splits.py) measure one number together
            r["method"],
            r["variant"],
            r["backbone"],
            unsplit(row_train_dataset(r)),
            unsplit(r["test_dataset"]),
            r["protocol"],
            bool(r["rerank"]),
        )
        index[key].append(r)
    return index


def fingerprint_conflict(rows: list[dict[str, Any]], splits: list[int] | None = None) -> str | None:
    """Why rows of one table cell must not be averaged: they were measured on different copies of a
    dataset of the same name (harness/data/fingerprint.py), naming the rows that differ; else None.
    `splits`: the rows' row_split, when the caller has them."""
    by_split: dict[int, list[dict]] = defaultdict(list)  # each split of a dataset is a copy of its own
    for r, split in zip(rows, map(row_split, rows) if splits is None else splits):
        by_split[split].append(r)
    for column, what in (("test_fingerprint", "test dataset"), ("train_fingerprint", "training dataset")):
        for of_split in by_split.values():
            conflict = _conflict(of_split, column, what)
            if conflict:
                return conflict
    return None


def _conflict(rows: list[dict[str, Any]], column: str, what: str) -> str | None:
    seen: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get(column):
            seen[r[column]].append(r)
    if len(seen) > 1:
        groups = "; ".join(
            f"cell(s) {', '.join(sorted({r['cell_id'] for r in group}))} (seed(s) "
            f"{', '.join(map(str, sorted({r['seed'] for r in group})))}): {fp}"
            for fp, group in seen.items()
        )
        name = rows[0]["test_dataset"] if column == "test_fingerprint" else rows[0]["train_dataset"]
        return (
            f"not averaged: the rows of {rows[0]['method']}:{rows[0]['variant']} on {rows[0]['backbone']} were "
            f"measured on different copies of {what} {name} (fingerprints differ): {groups}"
        )
    return None


def measure(rows: list[dict[str, Any]], metric: str) -> tuple[Measure | None, bool]:
    """Mean ± std over seeds of one metric, real data preferred; and whether synthetic rows were set aside.
    None when the rows' dataset fingerprints differ (see fingerprint_conflict)."""
    real = [r for r in rows if not r["synthetic"] and r.get(metric) is not None]
    synthetic = [r for r in rows if r["synthetic"] and r.get(metric) is not None]
    chosen = real or synthetic
    splits = [row_split(r) for r in chosen]  # once a row: a report measures each row many times
    if not chosen or fingerprint_conflict(chosen, splits):
        return None, False
    per_seed: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    # Several rows of one seed and split (e.g. from two grids) count once, averaged.
    for r, split in zip(chosen, splits):
        per_seed[r["seed"]][split].append(100.0 * r[metric])
    # A seed's number is the mean over its splits (CUHK03's classic protocol reports the mean of 20).
    values = [
        statistics.fmean([statistics.fmean(v) for v in of_seed.values()]) for _, of_seed in sorted(per_seed.items())
    ]
    std = statistics.stdev(values) if len(values) > 1 else None
    return Measure(statistics.fmean(values), std, len(values), synthetic=not real, splits=len(set(splits))), bool(
        real and synthetic
    )


def build_table(
    spec: TableSpec,
    store_rows: Iterable[dict[str, Any]],
    reference: Iterable[RefCell] | None = None,
    index: dict[Identity, list[dict[str, Any]]] | None = None,
) -> PaperTable:
    """The paper's table (rows, columns and order as printed) with the store's numbers beside it;
    `reference` holds the published numbers to lay out (default: the package's); `index`, the
    rows' index_rows when the caller builds many tables (once, not once per table)."""
    published = reference_cells() if reference is None else reference
    refs = [c for c in published if c.paper == spec.paper and c.table == spec.number]
    if not refs:
        raise ValueError(f"no reference cells for {spec.paper} Table {spec.number}")
    index = index_rows(store_rows) if index is None else index
    footnotes: list[str] = []
    counts = defaultdict(int)
    distances: set[str] = set()
    blocks = []
    for title, cells in _split_blocks(spec, refs):
        columns = _columns(spec, cells)
        by_row: dict[tuple, dict[tuple, RefCell]] = {}
        for c in cells:
            by_row.setdefault((c.method, c.variant, c.backbone, c.rerank), {})[_column_key(c)] = c
        labels = _row_labels(list(by_row))
        rows = []
        for key, row_cells in by_row.items():
            out = []
            for column_key, _ in columns:
                ref = row_cells.get(column_key)
                out.append(_cell(ref, index, footnotes, counts, distances) if ref else Cell(None, None, None, None))
            rows.append(Row(labels[key], key[2], tuple(out)))
        blocks.append(Block(title, tuple(col for _, col in columns), tuple(rows)))
    return PaperTable(
        spec,
        tuple(blocks),
        tuple(footnotes),
        counts["published"],
        counts["measurable"],
        counts["measured"],
        counts["synthetic"],
        counts["hidden"],
        tuple(sorted(distances)),
    )


def _cell(ref: RefCell, index, footnotes: list[str], counts, distances: set[str]) -> Cell:
    counts["published"] += 1
    found = identity(ref)
    result = None
    if found is not None:
        counts["measurable"] += 1
        rows = index.get(found, [])
        result, hidden = measure(rows, store_metric(ref))
        if result is not None and ref.rerank:
            distances.update(r.get("rerank_distance") or "unknown" for r in rows)
        counts["measured"] += result is not None
        counts["synthetic"] += result is not None and result.synthetic
        counts["hidden"] += hidden
    footnote = None
    conflict = fingerprint_conflict(index.get(found, [])) if found is not None else None
    if conflict:
        if conflict not in footnotes:
            footnotes.append(conflict)
        footnote = footnotes.index(conflict) + 1
    elif ref.uncertain:
        text = ref.note.replace("unrecovered.md", "caveats.md")
        if text not in footnotes:
            footnotes.append(text)
        footnote = footnotes.index(text) + 1
    if result is not None and result.splits > 1:
        text = f"ours: the mean over {result.splits} splits of the dataset (harness/splits.py), per seed"
        if text not in footnotes:
            footnotes.append(text)
        footnote = footnote or footnotes.index(text) + 1
    return Cell(ref.value, found, result, footnote)


def _split_blocks(spec: TableSpec, refs: list[RefCell]) -> list[tuple[str | None, list[RefCell]]]:
    if spec.block_by is None:
        return [(None, refs)]
    blocks: dict[str, list[RefCell]] = {}
    for c in refs:
        blocks.setdefault(getattr(c, spec.block_by), []).append(c)
    prefix = "Trained on " if spec.block_by == "train_dataset" else ""
    return [(prefix + dataset_label(name), cells) for name, cells in blocks.items()]


def _column_key(c: RefCell) -> tuple[str, str, str, str]:
    return (c.train_dataset, c.test_dataset, c.protocol, c.metric)


def _columns(spec: TableSpec, cells: list[RefCell]) -> list[tuple[tuple, Column]]:
    """Columns in the paper's order: dataset groups as listed in the spec (else as first seen), metrics likewise."""
    seen: dict[tuple, RefCell] = {}
    for c in cells:
        seen.setdefault(_column_key(c), c)
    first = list(seen)

    def group_rank(key):
        dataset_protocol = f"{key[1]}/{key[2]}"
        if dataset_protocol in spec.dataset_order:
            return spec.dataset_order.index(dataset_protocol)
        return len(spec.dataset_order) + [k[:3] for k in first].index(key[:3])

    def metric_rank(key):
        if key[3] in spec.metric_order:
            return spec.metric_order.index(key[3])
        return len(spec.metric_order) + first.index(key)

    ordered = sorted(first, key=lambda k: (group_rank(k), metric_rank(k)))
    result = []
    for key in ordered:
        train, test, protocol, metric = key
        group = dataset_label(test, protocol)
        if spec.block_by == "train_dataset" or train == test:
            pass
        else:
            group = f"{dataset_label(train)} → {group}"
        result.append((key, Column(group, metric)))
    return result


def _row_labels(keys: list[tuple[str, str, str, bool]]) -> dict[tuple, str]:
    """The printed name; a variant or backbone where a name repeats; '+re-ranking' on re-ranked rows
    whose name does not say so already."""
    labels = {}
    for key in keys:
        method, variant, backbone, rerank = key
        twins = [k for k in keys if k[0] == method and k[3] == rerank and k != key]
        label = method
        if twins and any(k[1] != variant for k in twins):
            label = f"{method} ({variant})" if variant else method
        elif twins and backbone:
            label = f"{method} ({backbone})"
        if rerank and not re.search(r"RR|ECN|re-?rank", method):
            label += " +re-ranking"
        labels[key] = label
    return labels


def paper_methods(paper: str) -> set[tuple[str, str, str]]:
    """The (method, variant, backbone) identities that the paper's tables measure."""
    found = set()
    for ref in reference_cells():
        if ref.paper == paper and (i := identity(ref)) is not None:
            found.add((i.method, i.variant, i.backbone))
    return found
