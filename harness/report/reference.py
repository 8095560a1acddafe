"""The papers' published numbers (package data) and how each of their results tables is laid out.

`reference/paper_results.csv` holds every number of every results table of the five papers, one
row per cell; `reference/caveats.md` explains the cells that are uncertain. A table's rows and
columns come from the CSV in the order the paper prints them, grouped into blocks where the
paper splits a table (SPReID per dataset, GASM Table 4 per training set).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

PAPERS = ("ssp-reid", "spreid", "dsa-reid", "scsn", "gasm")
PAPER_TITLES = {
    "ssp-reid": "SSP-ReID: saliency and semantic parsing for person re-identification",
    "spreid": "SPReID: human semantic parsing for person re-identification",
    "dsa-reid": "DSA-reID: densely semantically aligned person re-identification",
    "scsn": "SCSN: salience-guided cascaded suppression network",
    "gasm": "GASM: guided adaptive spatial matching for occluded and crowded person re-identification",
}


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


_SSP_ORDER = ("market1501/", "cuhk03/cuhk03-detected", "cuhk03/cuhk03-labeled", "dukemtmc/")
_MAP_FIRST = ("mAP", "rank1", "rank5", "rank10")

TABLES: tuple[TableSpec, ...] = (
    TableSpec("ssp-reid", 3, "The framework on five backbones (S-ReID, SP-ReID and both)", dataset_order=_SSP_ORDER),
    TableSpec("ssp-reid", 4, "Comparison with the state of the art; RR is re-ranking", dataset_order=_SSP_ORDER),
    TableSpec("spreid", 1, "Human semantic parsing on the LIP validation split (not a re-ID result)"),
    TableSpec("spreid", 2, "Input resolution of the Inception-V3 baseline", block_by="test_dataset"),
    TableSpec("spreid", 3, "Backbone of the baseline, without and with fine-tuning (ft)", block_by="test_dataset"),
    TableSpec("spreid", 4, "SPReID against the Inception-V3 baseline", block_by="test_dataset"),
    TableSpec("spreid", 5, "Weight sharing between the two aggregation heads", block_by="test_dataset"),
    TableSpec("spreid", 6, "Comparison with the state of the art (* adds ResNet-152 ft features)",
              block_by="test_dataset", metric_order=_MAP_FIRST),
    TableSpec("dsa-reid", 2, "Comparison with the state of the art",
              dataset_order=("market1501/single-query", "cuhk03/cuhk03-labeled", "cuhk03/cuhk03-detected", "cuhk01/", "dukemtmc/")),
    TableSpec("dsa-reid", 3, "Baselines and the parts of DSA-reID on Market-1501"),
    TableSpec("dsa-reid", 4, "Dense against coarse semantic alignment on Market-1501"),
    TableSpec("dsa-reid", 5, "Fusing the two streams on Market-1501"),
    TableSpec("scsn", 1, "Comparison with the state of the art on Market-1501", show_backbone=True),
    TableSpec("scsn", 2, "Comparison with the state of the art on DukeMTMC-reID", show_backbone=True),
    TableSpec("scsn", 3, "Comparison with the state of the art on CUHK03 (767/700 split)", show_backbone=True),
    TableSpec("scsn", 4, "Comparison with the state of the art on MSMT17", show_backbone=True),
    TableSpec("scsn", 5, "Ablation of SCSN's modules on DukeMTMC-reID"),
    TableSpec("scsn", 6, "Feature fusion strategies of NMFF (DukeMTMC-reID)"),
    TableSpec("gasm", 1, "Crowd-REID and Occluded-REID, trained on Market-1501, DukeMTMC or MSMT17"),
    TableSpec("gasm", 2, "Market-1501, DukeMTMC-reID and MSMT17"),
    TableSpec("gasm", 3, "Cross-domain: trained on one dataset, tested on another"),
    TableSpec("gasm", 4, "GASM's components, per training set", block_by="train_dataset"),
)

# Notes that mark a cell as uncertain (garbled extraction, inferred placement, a paper inconsistency).
_UNCERTAIN = re.compile(
    r"CAUTION|uncertain|labeled-vs-detected|lists the same|reassigned|likely a|"
    r"copy error|swap|here vs|= Table 3 MS|Table 3 MS->M 68|ABDNet is ref|not reliabl",
)


@cache
def reference_cells() -> tuple[RefCell, ...]:
    """Every published number, in the CSV's order (the papers' order)."""
    text = resources.files("harness.report").joinpath("reference/paper_results.csv").read_text(encoding="utf-8")
    return tuple(
        RefCell(
            paper=r["paper"], table=int(r["table"]), method=r["method"], variant=r["variant"],
            backbone=r["backbone"], train_dataset=r["train_dataset"], test_dataset=r["test_dataset"],
            protocol=r["protocol"], rerank=r["rerank"] == "true", metric=r["metric"], value=r["value"],
            note=r["note"],
        )
        for r in csv.DictReader(io.StringIO(text))
    )


def caveats_text() -> str:
    return resources.files("harness.report").joinpath("reference/caveats.md").read_text(encoding="utf-8")


def is_uncertain(cell: RefCell) -> bool:
    """Whether the cell's note flags it as uncertain (it then gets a footnote in every report)."""
    return bool(_UNCERTAIN.search(cell.note))


def table_specs(paper: str) -> list[TableSpec]:
    return [t for t in TABLES if t.paper == paper]
