"""Which store identity measures a published number, and which store rows a cell is looked up by.

A reference row names its measuring cell in the CSV's `store_*` columns; rows of methods that
reidbench does not run (competitors) leave them empty and show the published value alone. How
those columns are spelled:

* methods: ``baseline`` (variant ``bnneck``), ``ssp-reid``, ``spreid``, ``dsa-reid``, ``scsn``, ``gasm``;
  each paper's ablation rows are variants of its method, named after the printed row (kebab-case);
  SSP-ReID's "backbone only" rows are ``ssp-reid:backbone``, the bare backbone with a classifier
  and Table 1's loss, as the authors trained their baselines (methods/ssp_reid.py);
* backbones: timm/torchvision-style lower case (``resnet50``, ``inception_v3``, ...); a row that
  combines models at test time (a spec's ``[[combine]]``) is named after its parts' backbones joined
  by ``+``: SPReID's "combined" is ``inception_v3+inception_v3`` (w/fg and w/o fg), Table 6's "*"
  rows add ResNet-152 ft (``inception_v3+resnet152``, ``inception_v3+inception_v3+resnet152``);
* datasets: CUHK03 is ``cuhk03-labeled`` or ``cuhk03-detected`` after its boxes (SPReID's classic
  protocol: ``cuhk03-labeled-classic``); GASM's occlusion sets are ``crowd-reid`` and
  ``occluded-reid`` (test only); a training set follows its test set's boxes;
* protocols: ``market`` (Market-1501's rules, also used for DukeMTMC, MSMT17, CUHK03 767/700 and
  Crowd-REID), ``cuhk03-classic`` (SPReID's CUHK03 protocol of its ref. [24]), ``cuhk01``, ``occluded``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from harness.splits import split_in


@dataclass(frozen=True, order=True)
class Identity:
    """A measured cell's identity in the store (seed and synthetic aside)."""

    method: str
    variant: str
    backbone: str
    train_dataset: str
    test_dataset: str
    protocol: str
    rerank: bool


def row_train_dataset(row: dict) -> str:
    """The training set a store row is looked up under.

    A cell fine-tuned on a target (its config's `finetune_dataset`) counts as trained on the target
    for the target's rows, whatever it was pre-trained on: SPReID's Table 6 fine-tunes on "Market-1501,
    CUHK03 and DukeMTMC-reID datasets separately" (4.2) after the union, and DSA-reID's Table 2 CUHK01
    column is "pre-trained on CUHK03 and fine-tuned on CUHK01". Its rows on other test sets measure a
    model no table lists; they are looked up as "PRETRAIN>TARGET", which no reference row names, so a
    Duke-fine-tuned model's Market number never stands in for the Market-fine-tuned one. A combination
    (`[[combine]]`) row counts under its parts' target (the parts of one combination share it,
    harness.spec.parse._group_key). A cell trained on a union ("a+b+c", SPReID's merged datasets)
    without fine-tuning counts as trained on the member it is tested on, the way SPReID's tables list
    it. Other rows keep their training set.
    """
    train, test = row["train_dataset"], row["test_dataset"]
    target = _row_target(row)
    if target:
        return target if test == target else f"{train}>{target}"
    if "+" in train and test in train.split("+"):
        return test
    return train


def row_split(row: dict) -> int:
    """The dataset split a row measures (harness/splits.py; 0 for a dataset of one split)."""
    train, test, config = row["train_dataset"], row["test_dataset"], row.get("config") or ""
    if "-split" not in train and "-split" not in test and "-split" not in config:
        return 0  # no split's name (harness/splits.py: "<dataset>-split<k>") anywhere: no JSON to parse
    return split_in(train, test, _row_target(row))


def _row_target(row: dict) -> str | None:
    """finetune_target of a row's config."""
    config = row.get("config") or "{}"
    # Most rows fine-tune nothing: each "finetune_dataset" key of their config (json.dumps) is null.
    # Seeing that in the text spares parsing 1 KB of JSON a row, each time a report looks the row up.
    if config.count('"finetune_dataset": null') == config.count('"finetune_dataset"'):
        return None
    return finetune_target(json.loads(config))


def finetune_target(config: dict) -> str | None:
    """The fine-tuning target a row's model was trained on last: the cell's, or a combination's parts'
    (their config's `parts`, one cell each); None when there is none."""
    if "cell" in config:
        return config["cell"].get("finetune_dataset")
    targets = {p.get("finetune_dataset") for p in config.get("parts") or [] if isinstance(p, dict)}
    return targets.pop() if len(targets) == 1 else None


def identity(ref) -> Identity | None:
    """The store identity that measures this reference cell (a `RefCell`), or None where the CSV names none."""
    if not ref.store_method:
        return None
    return Identity(
        ref.store_method,
        ref.store_variant,
        ref.store_backbone,
        ref.store_train_dataset,
        ref.store_test_dataset,
        ref.store_protocol,
        ref.rerank,
    )


# The average precision each paper's evaluation computed, as the store column that measures its "mAP",
# with the evidence in brief (in full: reference/caveats.md, "Which AP each paper reports"). Where
# neither the paper nor its code says, the toolkit AP (`mAP`) is the default.
AP_NAMES = {
    "mAP": "the mean of the precision at each true match (torchreid's and fast-reid's AP)",
    "mAP_official": "the official Market-1501 code's AP (compute_AP.m: precision integrated over recall by trapezoids)",
}
PAPER_AP: dict[str, tuple[str, str]] = {
    "ssp-reid": (
        "mAP",
        "the paper defines AP as the sum of P(k) rel(k) over #relevant items (eqs. 5-6); "
        "its code base is deep-person-reid, whose eval_market1501 computes that",
    ),
    "spreid": (
        "mAP",
        "neither the paper nor its released code (feature extraction only) says which AP; the toolkit AP",
    ),
    "dsa-reid": ("mAP", 'the paper says "following the common practices" and released no code; the toolkit AP'),
    "scsn": ("mAP", "the paper names mAP without a definition or code; the toolkit AP"),
    "gasm": ("mAP", "its code base, FastReID (evaluation/rank.py), computes the mean precision at each true match"),
}


_TOOLKIT_AP = ("mAP", "the paper names mAP without saying which; the toolkit AP")


def paper_ap(paper: str) -> tuple[str, str]:
    """(store column, evidence) of the AP a paper's evaluation computed; the toolkit AP where unknown."""
    return PAPER_AP.get(paper, _TOOLKIT_AP)


def store_metric(ref) -> str:
    """The store column that measures a reference cell's metric: its paper's AP for "mAP"."""
    return paper_ap(ref.paper)[0] if ref.metric == "mAP" else ref.metric
