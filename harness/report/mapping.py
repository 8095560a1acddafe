"""Where each published number lives in the store: the one place that names methods, variants,
backbones, datasets and protocols as reidbench writes them.

A reference row (a printed method name, its variant text and backbone, the datasets and the
protocol as the CSV spells them) becomes the store's identity columns. Rows of methods that
reidbench does not run (competitors) map to nothing and show the published value alone.

Naming, in short:

* methods: ``baseline`` (variant ``bnneck``), ``ssp-reid``, ``spreid``, ``dsa-reid``, ``scsn``, ``gasm``;
  each paper's ablation rows are variants of its method, named after the printed row (kebab-case);
  SSP-ReID's "backbone only" rows are the plain ``baseline:bnneck`` on that backbone;
* backbones: timm/torchvision-style lower case (``resnet50``, ``inception_v3``, ...); SPReID's
  starred rows concatenate two models' features and are named ``inception_v3+resnet152``;
* datasets: CUHK03 is ``cuhk03-labeled`` or ``cuhk03-detected`` after its boxes; GASM's
  occlusion sets are ``crowd-reid`` and ``occluded-reid`` (test only);
* protocols: ``market`` (Market-1501's rules, also used for DukeMTMC, MSMT17, CUHK03 767/700 and
  Crowd-REID), ``cuhk03-classic`` (SPReID's CUHK03 protocol of its ref. [24]), ``cuhk01``, ``occluded``.
"""

from __future__ import annotations

import json

from dataclasses import dataclass

# (paper, printed method, printed variant) -> (store method, store variant).
_SSP = {
    "backbone only": ("baseline", "bnneck"),
    "S-ReID (saliency subnet)": ("ssp-reid", "s-reid"),
    "SP-ReID (semantic-parsing subnet)": ("ssp-reid", "sp-reid"),
    "SSP-ReID (full framework: S-ReID + SP-ReID)": ("ssp-reid", "ssp"),
}

METHODS: dict[tuple[str, str, str], tuple[str, str]] = {
    # SSP-ReID: the variant text decides; the printed name only repeats the backbone.
    **{("ssp-reid", "*", variant): ids for variant, ids in _SSP.items()},
    # SPReID: Model-S/M/L are the Inception-V3 baseline at three input sizes, -ft fine-tuned larger.
    ("spreid", "Model-S", "input 246x82"): ("spreid", "model-s"),
    ("spreid", "Model-M", "input 375x125"): ("spreid", "model-m"),
    ("spreid", "Model-L", "input 492x164"): ("spreid", "model-l"),
    ("spreid", "Model-L ft", "ft, input 748x246"): ("spreid", "model-l-ft"),
    ("spreid", "Inception-V3", ""): ("spreid", "model-l"),
    ("spreid", "ResNet-50", ""): ("spreid", "model-l"),
    ("spreid", "ResNet-152", ""): ("spreid", "model-l"),
    ("spreid", "Inception-V3 ft", "ft"): ("spreid", "model-l-ft"),
    ("spreid", "ResNet-50 ft", "ft"): ("spreid", "model-l-ft"),
    ("spreid", "ResNet-152 ft", "ft"): ("spreid", "model-l-ft"),
    ("spreid", "Inception-V3", "baseline (global average pooling)"): ("spreid", "model-l"),
    ("spreid", "SPReID wf/g", "with foreground (w/fg)"): ("spreid", "wfg"),
    ("spreid", "SPReID wof/g", "without foreground (w/o fg)"): ("spreid", "wofg"),
    ("spreid", "SPReID combined", "combined: l2-normalization+concatenation of w/fg and w/o fg"): ("spreid", "combined"),
    ("spreid", "SPReID wf/g", "w/fg, weight sharing N"): ("spreid", "wfg"),
    ("spreid", "SPReID wf/g", "w/fg, weight sharing Y"): ("spreid", "wfg-shared"),
    ("spreid", "SPReID wf/g-ft", "w/fg, ft, weight sharing N"): ("spreid", "wfg-ft"),
    ("spreid", "SPReID wf/g-ft", "w/fg, ft, weight sharing Y"): ("spreid", "wfg-ft-shared"),
    ("spreid", "Inception-V3 ft", "ft, baseline"): ("spreid", "model-l-ft"),
    ("spreid", "Inception-V3 ft*", "ft, baseline"): ("spreid", "model-l-ft"),
    ("spreid", "SPReID combined-ft", "ft, combined w/fg+w/o fg"): ("spreid", "combined-ft"),
    ("spreid", "SPReID combined-ft*", "ft, combined w/fg+w/o fg"): ("spreid", "combined-ft"),
    # DSA-reID: the final scheme (inference on the MF-Stream only) is variant "full".
    ("dsa-reid", "DSA-reID", ""): ("dsa-reid", "full"),
    ("dsa-reid", "DSA-reID", "pretrained on CUHK03"): ("dsa-reid", "full-cuhk03-pretrained"),
    ("dsa-reid", "Baseline", "ResNet-50 baseline"): ("dsa-reid", "baseline"),
    ("dsa-reid", "Baseline (RE)", "baseline + random erasing"): ("dsa-reid", "baseline-re"),
    ("dsa-reid", "Baseline (RE+LS)", "baseline + random erasing + label smoothing"): ("dsa-reid", "baseline-re-ls"),
    ("dsa-reid", "Baseline (RE+LS)", ""): ("dsa-reid", "baseline-re-ls"),
    ("dsa-reid", "Baseline (Two branches)", "MF-Stream only, two-branch head, on Baseline(RE+LS)"): ("dsa-reid", "two-branches"),
    ("dsa-reid", "DSA-Global(Single)", "only global branch in both streams (train+inference)"): ("dsa-reid", "global-single"),
    ("dsa-reid", "DSA-Local(Single)", "only local branch in both streams (train+inference)"): ("dsa-reid", "local-single"),
    ("dsa-reid", "DSA-Global(Joint)", "joint training, inference on zG"): ("dsa-reid", "global-joint"),
    ("dsa-reid", "DSA-Local(Joint)", "joint training, inference on zL"): ("dsa-reid", "local-joint"),
    ("dsa-reid", "DSA(Two streams fused)", "inference on fused zG, zL"): ("dsa-reid", "two-streams-fused"),
    ("dsa-reid", "DSA-reID(Only MF-Stream)", "final scheme, inference on fG, fL (DSAG-Stream discarded)"): ("dsa-reid", "full"),
    ("dsa-reid", "CSA(Only MF-Stream)", "coarse alignment: 24 cropped part images instead of DSAP-images"): ("dsa-reid", "csa"),
    ("dsa-reid", "DSA(Only MF-Stream)", "dense alignment (DSAP-images)"): ("dsa-reid", "full"),
    ("dsa-reid", "Concatenation+fc", "two-stream fusion by concatenation + FC"): ("dsa-reid", "concat-fc"),
    ("dsa-reid", "Elem-add", "two-stream fusion by element-wise add (used in DSA-reID)"): ("dsa-reid", "full"),
    # SCSN: "SCSN(4 stages)" is the full network (B&A + SFE*3 + NMFF over stages 1-4).
    ("scsn", "SCSN(4 stages)", ""): ("scsn", "stages-4"),
    ("scsn", "SCSN(3 stages)", ""): ("scsn", "stages-3"),
    ("scsn", "Baseline", "ResNet50 + global branch, ID + triplet loss"): ("scsn", "baseline"),
    ("scsn", "Baseline + CAM", "channel-wise attention module"): ("scsn", "cam"),
    ("scsn", "Baseline + SAM(without residual)", "spatial attention without residual update"): ("scsn", "sam"),
    ("scsn", "Baseline + RSAM", "residual spatial attention module"): ("scsn", "rsam"),
    ("scsn", "Baseline + CAM+SAM", "CAM + SAM"): ("scsn", "cam-sam"),
    ("scsn", "Baseline + RDAM(CAM+RSAM)", "residual dual attention module"): ("scsn", "rdam"),
    ("scsn", "B&A + SFE*1", "backbone+RDAM (B&A) + 1 extra SFE stage"): ("scsn", "sfe-1"),
    ("scsn", "B&A + SFE*2", "B&A + 2 extra SFE stages"): ("scsn", "sfe-2"),
    ("scsn", "B&A + SFE*3", "B&A + 3 extra SFE stages"): ("scsn", "sfe-3"),
    ("scsn", "SCSN(B&A+SFE*2+NMFF)", "= SCSN(3 stages) in Table 2"): ("scsn", "stages-3"),
    ("scsn", "SCSN(B&A+SFE*3+NMFF)", "= SCSN(4 stages) in Table 2"): ("scsn", "stages-4"),
    ("scsn", "B", "B = no feature fusion"): ("scsn", "no-fusion"),
    ("scsn", "B+N(14)", "NMFF fusing ResNet50 stages 14"): ("scsn", "nmff-14"),
    ("scsn", "B+N(24)", "NMFF fusing ResNet50 stages 24"): ("scsn", "nmff-24"),
    ("scsn", "B+N(34)", "NMFF fusing ResNet50 stages 34"): ("scsn", "nmff-34"),
    ("scsn", "B+N(24,34)", "NMFF fusing ResNet50 stages 24,34"): ("scsn", "nmff-24-34"),
    ("scsn", "B+N(14,24,34)", "NMFF fusing ResNet50 stages 14,24,34"): ("scsn", "nmff-14-24-34"),
    # GASM: its baseline is FCN + average pooling; "+pose, +mask" is GASM itself.
    ("gasm", "Baseline", "ResNet-50 baseline (FCN + average pooling)"): ("gasm", "baseline"),
    ("gasm", "Baseline", "ResNet-50 + triplet + softmax CE, global feature matching"): ("gasm", "baseline"),
    ("gasm", "Baseline", ""): ("gasm", "baseline"),
    ("gasm", "Baseline", "FCN + average pooling"): ("gasm", "baseline"),
    ("gasm", "GASM", "FCN + pose layer + mask layer, guided adaptive spatial matching"): ("gasm", "full"),
    ("gasm", "GASM", ""): ("gasm", "full"),
    ("gasm", "+mask", "FCN + mask layer"): ("gasm", "mask"),
    ("gasm", "+pose", "FCN + pose layer"): ("gasm", "pose"),
    ("gasm", "+pose, +mask", "FCN + pose layer + mask layer (GASM)"): ("gasm", "full"),
}

BACKBONES = {
    "ResNet50": "resnet50", "ResNet-50": "resnet50", "ResNet-152": "resnet152", "ResNet50-M": "resnet50m",
    "DenseNet121": "densenet121", "Inception-V3": "inception_v3", "Inception-V4": "inception_v4",
    "Xception": "xception", "Inception-V3 + ResNet-152": "inception_v3+resnet152",
}

# The CSV's (dataset, protocol) -> (store dataset, store protocol); `None` for "every paper".
_DATASETS: dict[tuple[str, str, str | None], tuple[str, str]] = {
    ("market1501", "", None): ("market1501", "market"),
    ("market1501", "single-query", None): ("market1501", "market"),
    ("dukemtmc", "", None): ("dukemtmc", "market"),
    ("dukemtmc", "single-query", None): ("dukemtmc", "market"),
    ("msmt17", "", None): ("msmt17", "market"),
    ("cuhk03", "cuhk03-labeled", None): ("cuhk03-labeled", "market"),
    ("cuhk03", "cuhk03-detected", None): ("cuhk03-detected", "market"),
    ("cuhk03", "cuhk03-labeled", "spreid"): ("cuhk03-labeled-classic", "cuhk03-classic"),
    ("cuhk01", "", None): ("cuhk01", "cuhk01"),
    ("crowdreid", "", None): ("crowd-reid", "market"),
    ("occludedreid", "", None): ("occluded-reid", "occluded"),
}

# Store columns for the CSV's metric names; LIP parsing accuracies have none.
METRICS = {"mAP": "mAP", "rank1": "rank1", "rank5": "rank5", "rank10": "rank10"}


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

    A cell trained on a union ("a+b+c", SPReID's merged datasets) counts as trained on the member it
    is tested on, the way SPReID's tables list it; a cell fine-tuned on a target (its config's
    `finetune_dataset`) counts so only for the target's rows. Other rows keep their training set.
    """
    train, test = row["train_dataset"], row["test_dataset"]
    if "+" not in train or test not in train.split("+"):
        return train
    target = json.loads(row.get("config") or "{}").get("cell", {}).get("finetune_dataset")
    return test if target in (None, test) else train


def store_dataset(paper: str, dataset: str, protocol: str) -> tuple[str, str] | None:
    """(dataset, protocol) as the store names them, or None for sets reidbench does not have."""
    return _DATASETS.get((dataset, protocol, paper)) or _DATASETS.get((dataset, protocol, None))


def store_method(paper: str, method: str, variant: str) -> tuple[str, str] | None:
    return METHODS.get((paper, method, variant)) or METHODS.get((paper, "*", variant))


def identity(ref) -> Identity | None:
    """The store identity that measures this reference cell, or None (a competitor, or no such data)."""
    found = store_method(ref.paper, ref.method, ref.variant)
    backbone = BACKBONES.get(ref.backbone)
    test = store_dataset(ref.paper, ref.test_dataset, ref.protocol)
    if found is None or backbone is None or test is None or ref.metric not in METRICS:
        return None
    # The training set follows the test set's boxes (CUHK03 labeled or detected); the
    # cross-domain training sets (Market-1501, DukeMTMC, MSMT17) have no protocol of their own.
    train = test if ref.train_dataset == ref.test_dataset else store_dataset(ref.paper, ref.train_dataset, "")
    if train is None:
        return None
    return Identity(found[0], found[1], backbone, train[0], test[0], test[1], ref.rerank)
