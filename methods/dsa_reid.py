"""DSA-reID: Zhang, Lan, Zeng and Chen, "Densely Semantically Aligned Person Re-Identification" (CVPR 2019).

Two streams trained together. The MF-Stream is a ResNet's conv1-conv4 (ImageNet weights) and a
randomly initialised head: a global branch shaped like conv5_x (stride 1) giving fG, C wide, and 8
local branches with 1/8 of its channels on each layer, giving fL = [fL,1..fL,8], 8 x C/8. The
DSAG-Stream, trained from scratch, reads the 24 DSAP images (the ``densepose`` cue) through the
multi-branch sub-networks of Table 1 and a head of the same two branches, giving dG and dL. The
streams are fused, zG = fG + dG and zL = fL + dL; losses: ID on fG and on each fL,i (weight 0.5),
batch-hard triplet on zG and zL (1.5), ID on zG and zL (1.0). At test time only the MF-Stream
runs and the embedding is [fG, fL] (2C: 4096 on ResNet-50), so no cue is needed. C is the
backbone's width (2048 on ResNet-50, 512 on ResNet-18); the DSAG widths before its head are
Table 1's whatever the backbone.

Choices where the paper is silent or ambiguous, with the sentence each rests on:

- Part grouping (Fig. 4, "we element-wisely add the features" of "a pair of left-right symmetric
  parts", then "the two branches corresponding to the front-back symmetric parts"). DensePose's
  part indices (facebookresearch/DensePose, challenge/2019_COCO_DensePose/data_format.md, whose
  patch pairs split a limb into its back and front): 1, 2 torso back, front; 3, 4
  right, left hand; 5, 6 left, right foot; 7, 9 right upper leg and 8, 10 left upper leg (back,
  front); 11, 13 and 12, 14 the lower legs likewise; 15, 17 left and 16, 18 right upper arm;
  19, 21 left and 20, 22 right lower arm; 23, 24 right, left head. 24 -> 13 adds each left-right
  pair (`MERGE_24_TO_13`); 13 -> 8 adds each front-back pair (`MERGE_13_TO_8`), giving Fig. 4's
  torso, hand, foot, upper leg, lower leg, upper arm, lower arm, head. Hands, feet and head have
  no front-back pair in DensePose's 24 parts and pass the second merge alone.
- MF-Stream local branches: "Each local branch of the MF-Stream uses an architecture similar to the
  global branch but has only 1/8 of the number of channels on each layer". Each branch sees the whole
  conv4 map F (its first layers read all of F's channels) and is made part-aware only by being
  fused with, and supervised beside, the DSAG part feature dL,i. The other reading, branch i reads
  the i-th eighth of F's channels as conv5_l reads Di ("F in R^(h x w x cA)" with cA = N x c),
  is the option ``local_input="slices"``.
- MF-Stream head initialisation: "The Head network ... is randomly initialized", so the global
  branch does not start from conv5's ImageNet weights (He init, last BatchNorm of each residual
  branch at zero as for the other randomly initialised ResNets here). Its first block has stride
  1 when last_stride is 1 ("the last spatial down-sample operation in the Conv5 layer is removed").
- ID classifier: "a classifier constructed by two fully connected (FC) layers followed by a
  SoftMax": Linear(d, h) -> BatchNorm -> ReLU -> Linear(h, ids) with h = min(d, 512), the 512-d
  bottleneck of the IDE/PCB classifiers the paper builds on, never wider than its input. One
  classifier per supervised feature: fG, each fL,i, zG, zL.
- Loss weights: "The ID loss for the MF-Stream features, the triplet loss, and ID loss for the fused
  features are weighed by 0.5, 1.5 and 1.0": every ID loss on fG and on each of the 8 fL,i is
  weighted 0.5 (summed, as PCB sums its part losses), triplet on zG and on zL 1.5 each, ID on zG
  and zL 1.0 each. Label smoothing (the paper's "LS", epsilon not stated) is the spec's
  label_smoothing on every ID loss; the baseline rows without LS set it to 0 in their spec.
- Baselines ("Baseline", "(RE)", "(RE+LS)"): the whole ImageNet ResNet (conv5 included, last
  stride 1), global average pooling, the two-FC classifier (ID, 1.0) and triplet (1.5) on the
  pooled feature. RE and LS are recipe switches (random_erasing, label_smoothing in the spec).
- "Baseline (Two branches)": "our MF-Stream only scheme ... with a Head network of two branches":
  the MF-Stream alone, trained with the same losses as if dG = dL = 0 (zG = fG, zL = fL).
- "DSA-Global(Joint)", "DSA-Local(Joint)", "DSA(Two streams fused)" (Table 3): the full model,
  "joint training", inferred on zG, on zL, or on [zG, zL]. One trained model serves the three and
  ``full`` (inference on [fG, fL]): ``global-joint``, ``local-joint`` and ``two-streams-fused`` are
  views of ``full`` (`VIEWS`). A grid that lists them with ``full`` trains once; the ``full`` cell's
  run evaluates each view and publishes its rows under the view's own cell id, which records the
  training cell (``trained_by``). Listed alone, a view evaluates the ``full`` cell's kept model, or
  trains the same model itself when there is none.
- "DSA-Global/Local(Single)": "only the global/local branch in our two stream framework for both
  training and inferencing"; inference on the fused zG / zL, like the Joint rows they are compared
  with ("Thanks to the joint training, DSA-Global/Local(Joint) significantly outperforms
  DSA-Global/Local(Single)"), so these and the Joint and fused rows need the densepose cue at test.
- CSA: "replacing the 24 DSAP-images by 24 cropped part images": the ``densepose-crops`` cue, each
  part's bounding box in the image resized to 32 x 32 (see harness/data/body_maps.py `part_crops`).
- DSAG-Stream size: its Head is Table 1's, conv5_g "[3 x 3, 2048; 3 x 3, 2048] x 2" on the 8 merged
  128-channel maps (1024 channels in): four 3 x 3 convolutions of 2048 channels, 1024 x 2048 x 9 +
  3 x 2048 x 2048 x 9 = 132 M weights, plus the first block's 1 x 1 projection and conv5_l's
  [3 x 3, 256] x 2 per part: 151 M parameters on ResNet-50, 162 M with the multi-branch sub-networks.
  That is what the table's widths give (a ResNet-18 conv5_x at 2048 channels, where ResNet-18 has
  512), not a slip of this code; it is training-only (inference runs the MF-Stream), but it is in
  the kept model (749 MiB on ResNet-50).
- Concatenation+fc: "for either branch, the features from the MF-Stream and the DSAG-Stream are
  concatenated followed by a fully connected layer": zG = W_G [fG, dG], zL = W_L [fL, dL], each a
  Linear(2C, C) with bias.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from methods import Cues, register_method
from methods.backbones import create_backbone
from methods.losses import batch_hard_triplet, identity_loss

VARIANTS = (
    "full",
    "full-cuhk03-pretrained",
    "baseline",
    "baseline-re",
    "baseline-re-ls",
    "two-branches",
    "global-single",
    "local-single",
    "global-joint",
    "local-joint",
    "two-streams-fused",
    "csa",
    "concat-fc",
)
NUM_PARTS = 8
# DensePose parts 1..24 -> 13 by adding left-right pairs (Fig. 4's M1..M13).
MERGE_24_TO_13 = (
    (1,),
    (2,),
    (3, 4),
    (5, 6),
    (7, 8),
    (9, 10),
    (11, 12),
    (13, 14),
    (15, 16),
    (17, 18),
    (19, 20),
    (21, 22),
    (23, 24),
)
# M1..M13 -> 8 by adding front-back pairs: torso, hand, foot, upper leg, lower leg, upper arm, lower arm, head.
MERGE_13_TO_8 = ((1, 2), (3,), (4,), (5, 6), (7, 8), (9, 10), (11, 12), (13,))
PART_NAMES = ("torso", "hand", "foot", "upper-leg", "lower-leg", "upper-arm", "lower-arm", "head")
W_MF_ID, W_TRIPLET, W_FUSED_ID = 0.5, 1.5, 1.0


def merge_matrix(groups: tuple[tuple[int, ...], ...], inputs: int) -> torch.Tensor:
    """(len(groups), inputs) 0/1 matrix adding the 1-based members of each group."""
    matrix = torch.zeros(len(groups), inputs)
    for row, members in enumerate(groups):
        matrix[row, [m - 1 for m in members]] = 1.0
    return matrix


class Merge(nn.Module):
    """Element-wise addition of branches: (B, n * c, H, W) laid out branch-major -> (B, groups * c, H, W)."""

    def __init__(self, groups: tuple[tuple[int, ...], ...], inputs: int):
        super().__init__()
        self.register_buffer("matrix", merge_matrix(groups, inputs), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n = self.matrix.shape[1]
        merged = torch.einsum("gn,bnchw->bgchw", self.matrix.to(x.dtype), x.reshape(b, n, -1, h, w))
        return merged.reshape(b, -1, h, w)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch)
    )


class Block(nn.Module):
    """A ResNet block run as `groups` independent branches side by side in one tensor (grouped
    convolutions): "basic" is two 3x3 convolutions, "bottleneck" 1x1, 3x3 (strided), 1x1. Widths
    are totals over the branches. `in_groups` = 1 lets every branch read the whole input."""

    def __init__(
        self,
        kind: str,
        in_ch: int,
        mid: int,
        out: int,
        *,
        stride: int = 1,
        groups: int = 1,
        in_groups: int | None = None,
    ):
        super().__init__()
        in_groups = groups if in_groups is None else in_groups
        if kind == "basic":
            layers = [_conv(in_ch, out, 3, stride, in_groups), _conv(out, out, 3, 1, groups)]
        elif kind == "bottleneck":
            layers = [
                _conv(in_ch, mid, 1, 1, in_groups),
                _conv(mid, mid, 3, stride, groups),
                _conv(mid, out, 1, 1, groups),
            ]
        else:
            raise ValueError(f"unknown block kind {kind!r}; known: basic, bottleneck")
        self.layers = nn.ModuleList(layers)
        self.shortcut = _conv(in_ch, out, 1, stride, in_groups) if stride != 1 or in_ch != out else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for i, layer in enumerate(self.layers):
            y = layer(y)
            if i < len(self.layers) - 1:
                y = self.relu(y)
        return self.relu(y + self.shortcut(x))


def stage(
    kind: str,
    in_ch: int,
    mid: int,
    out: int,
    blocks: int,
    *,
    stride: int,
    groups: int = 1,
    in_groups: int | None = None,
) -> nn.Sequential:
    first = Block(kind, in_ch, mid, out, stride=stride, groups=groups, in_groups=in_groups)
    return nn.Sequential(first, *(Block(kind, out, mid, out, groups=groups) for _ in range(blocks - 1)))


def init_random(module: nn.Module) -> None:
    """He initialisation; each residual branch's last BatchNorm starts at zero (Goyal et al. 2017)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, Block):
            nn.init.zeros_(m.layers[-1][1].weight)


class Classifier(nn.Module):
    """The paper's ID classifier: two FC layers (softmax in the loss)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        hidden = min(in_features, 512)
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _resnet_layout(backbone: nn.Module) -> tuple[str, int, int, int, int, int]:
    """(block kind, conv4 width, conv5 inner width, conv5 width C, conv5 blocks, conv5 stride) of a ResNet."""
    if not hasattr(backbone, "layer4"):
        raise ValueError("dsa-reid takes conv1-conv4 of a ResNet backbone (resnet18, resnet50, ...)")
    first = backbone.layer4[0]
    kind = "bottleneck" if isinstance(first, torchvision.models.resnet.Bottleneck) else "basic"
    stride = first.downsample[0].stride[0]
    return kind, first.conv1.in_channels, first.conv1.out_channels, backbone.out_channels, len(backbone.layer4), stride


class TwoBranchHead(nn.Module):
    """A global branch (C) and NUM_PARTS part branches (C/8 each), each average-pooled."""

    def __init__(self, global_branch: nn.Module | None, local_branch: nn.Module | None):
        super().__init__()
        self.global_branch, self.local_branch = global_branch, local_branch

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        g = self.global_branch(x).mean(dim=(2, 3)) if self.global_branch is not None else None
        loc = self.local_branch(x).mean(dim=(2, 3)) if self.local_branch is not None else None
        return g, loc  # local: (B, C), branch-major, so .view(B, 8, C/8) gives the parts


class DsagStream(nn.Module):
    """Table 1: per-part conv1 5x5,32; conv2 3x3,64; conv3_x [3x3,64]x2 (stride 2); add 24 -> 13;
    conv4_x [3x3,128]x2 (stride 2); add 13 -> 8; head conv5_g (C) on the 8 maps concatenated and
    conv5_l (C/8 per part) on each, [3x3]x2 blocks, average pooled. Branches are convolution groups."""

    def __init__(self, width: int, *, use_global: bool, use_local: bool, parts: int = 24):
        super().__init__()
        p, m, n = parts, len(MERGE_24_TO_13), NUM_PARTS
        self.parts = parts
        self.mbn = nn.Sequential(
            _conv(3 * p, 32 * p, 5, 1, p),
            nn.ReLU(inplace=True),
            _conv(32 * p, 64 * p, 3, 1, p),
            nn.ReLU(inplace=True),
            stage("basic", 64 * p, 0, 64 * p, 2, stride=2, groups=p),
            Merge(MERGE_24_TO_13, p),
            stage("basic", 64 * m, 0, 128 * m, 2, stride=2, groups=m),
            Merge(MERGE_13_TO_8, m),
        )
        self.head = TwoBranchHead(
            stage("basic", 128 * n, 0, width, 2, stride=1) if use_global else None,
            stage("basic", 128 * n, 0, width, 2, stride=1, groups=n) if use_local else None,
        )
        init_random(self)

    def forward(self, parts: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        b, p, c, h, w = parts.shape
        if p != self.parts or c != 3:
            raise ValueError(
                f"the DSAG-Stream reads ({self.parts}, 3, H, W) part images per person, got {tuple(parts.shape[1:])}"
            )
        return self.head(self.mbn(parts.reshape(b, p * c, h, w)))


class DsaReid(nn.Module):
    """MF-Stream (+ DSAG-Stream in training); `test` picks the inference feature: "mf" = [fG, fL],
    "zg", "zl", "fused" = [zG, zL]; the last three run the DSAG-Stream at test time too."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        use_global: bool,
        use_local: bool,
        dsag: bool,
        fusion: str,
        test: str,
        cue: str,
        local_input: str,
        label_smoothing: float,
        triplet_margin: float,
    ):
        super().__init__()
        kind, c4, inner, width, blocks, stride = _resnet_layout(backbone)
        if width % NUM_PARTS:
            raise ValueError(f"the backbone's width {width} does not split into {NUM_PARTS} parts")
        if local_input not in ("whole", "slices"):
            raise ValueError(f"local_input must be 'whole' or 'slices', not {local_input!r}")
        self.trunk = nn.Sequential(backbone.stem, backbone.layer1, backbone.layer2, backbone.layer3)
        self.mf_head = TwoBranchHead(
            stage(kind, c4, inner, width, blocks, stride=stride) if use_global else None,
            stage(
                kind,
                c4,
                inner,
                width,
                blocks,
                stride=stride,
                groups=NUM_PARTS,
                in_groups=1 if local_input == "whole" else NUM_PARTS,
            )
            if use_local
            else None,
        )
        init_random(self.mf_head)
        self.dsag = DsagStream(width, use_global=use_global, use_local=use_local) if dsag else None
        self.use_global, self.use_local, self.fusion, self.test = use_global, use_local, fusion, test
        self.width = width
        if fusion not in ("add", "concat-fc"):
            raise ValueError(f"fusion must be 'add' or 'concat-fc', not {fusion!r}")
        concat = fusion == "concat-fc" and dsag
        self.fuse_g = nn.Linear(2 * width, width) if concat and use_global else None
        self.fuse_l = nn.Linear(2 * width, width) if concat and use_local else None
        self.id_fg = Classifier(width, num_classes) if use_global else None
        self.id_zg = Classifier(width, num_classes) if use_global else None
        self.id_fl = (
            nn.ModuleList(Classifier(width // NUM_PARTS, num_classes) for _ in range(NUM_PARTS)) if use_local else None
        )
        self.id_zl = Classifier(width, num_classes) if use_local else None
        self.train_cues = (cue,) if dsag else ()
        self.test_cues = (cue,) if test != "mf" else ()
        branches = int(use_global) + int(use_local)
        self.embedding_dim = width * (branches if test in ("mf", "fused") else 1)
        self.label_smoothing, self.triplet_margin = label_smoothing, triplet_margin

    def _fuse(self, f: torch.Tensor, d: torch.Tensor | None, fc: nn.Module | None) -> torch.Tensor:
        if d is None:
            return f
        return f + d if self.fusion == "add" else fc(torch.cat([f, d], dim=1))

    def forward_features(self, images: torch.Tensor, cues: dict[str, torch.Tensor] | None, with_dsag: bool):
        """(fG, fL, zG, zL); a branch that is not used is None, and z = f without the DSAG-Stream."""
        fg, fl = self.mf_head(self.trunk(images))
        dg, dl = self.dsag(cues[self.train_cues[0]]) if with_dsag else (None, None)
        zg = self._fuse(fg, dg, self.fuse_g) if fg is not None else None
        zl = self._fuse(fl, dl, self.fuse_l) if fl is not None else None
        return fg, fl, zg, zl

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor] | None = None):
        if not self.training:
            fg, fl, zg, zl = self.forward_features(images, cues, with_dsag=self.dsag is not None and self.test != "mf")
            pick = {"mf": (fg, fl), "zg": (zg,), "zl": (zl,), "fused": (zg, zl)}[self.test]
            return torch.cat([f for f in pick if f is not None], dim=1)
        fg, fl, zg, zl = self.forward_features(images, cues, with_dsag=self.dsag is not None)
        out = {}
        if fg is not None:
            out.update(zg=zg, logits_fg=self.id_fg(fg), logits_zg=self.id_zg(zg))
        if fl is not None:
            parts = fl.view(fl.shape[0], NUM_PARTS, -1)
            out.update(
                zl=zl,
                logits_zl=self.id_zl(zl),
                logits_fl=torch.stack([head(parts[:, i]) for i, head in enumerate(self.id_fl)], dim=1),
            )
        return out

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        ls, margin = self.label_smoothing, self.triplet_margin
        terms = {}
        if "zg" in outputs:
            terms["id_fg"] = W_MF_ID * identity_loss(outputs["logits_fg"], pids, ls)
            terms["triplet_zg"] = W_TRIPLET * batch_hard_triplet(outputs["zg"], pids, margin)
            terms["id_zg"] = W_FUSED_ID * identity_loss(outputs["logits_zg"], pids, ls)
        if "zl" in outputs:
            logits = outputs["logits_fl"]
            terms["id_fl"] = (
                W_MF_ID * NUM_PARTS * identity_loss(logits.flatten(0, 1), pids.repeat_interleave(NUM_PARTS), ls)
            )
            terms["triplet_zl"] = W_TRIPLET * batch_hard_triplet(outputs["zl"], pids, margin)
            terms["id_zl"] = W_FUSED_ID * identity_loss(outputs["logits_zl"], pids, ls)
        return terms


class ResNetBaseline(nn.Module):
    """The paper's ResNet baseline: the whole ImageNet ResNet, average pooling, ID (two FC layers) + triplet."""

    train_cues: tuple[str, ...] = ()
    test_cues: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module, num_classes: int, *, label_smoothing: float, triplet_margin: float):
        super().__init__()
        self.backbone = backbone
        self.embedding_dim = backbone.out_channels
        self.classifier = Classifier(self.embedding_dim, num_classes)
        self.label_smoothing, self.triplet_margin = label_smoothing, triplet_margin

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor] | None = None):
        pooled = self.backbone(images).mean(dim=(2, 3))
        return pooled if not self.training else {"features": pooled, "logits": self.classifier(pooled)}

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "id": W_FUSED_ID * identity_loss(outputs["logits"], pids, self.label_smoothing),
            "triplet": W_TRIPLET * batch_hard_triplet(outputs["features"], pids, self.triplet_margin),
        }


# variant -> (global branch, local branch, DSAG-Stream, fusion, inference feature, DSAG input cue)
_DESIGNS = {
    "full": (True, True, True, "add", "mf", "densepose"),
    "full-cuhk03-pretrained": (True, True, True, "add", "mf", "densepose"),
    "two-branches": (True, True, False, "add", "mf", "densepose"),
    "global-single": (True, False, True, "add", "zg", "densepose"),
    "local-single": (False, True, True, "add", "zl", "densepose"),
    "global-joint": (True, True, True, "add", "zg", "densepose"),
    "local-joint": (True, True, True, "add", "zl", "densepose"),
    "two-streams-fused": (True, True, True, "add", "fused", "densepose"),
    "csa": (True, True, True, "add", "mf", "densepose-crops"),
    "concat-fc": (True, True, True, "concat-fc", "mf", "densepose"),
}


def _cues(variant: str) -> Cues:
    """A variant's cues, from its design: the DSAG-Stream's cue in training, and at test time unless
    the embedding is the MF-Stream's alone; the ResNet baselines use none."""
    if variant not in _DESIGNS:
        return Cues()
    _, _, dsag, _, test, cue = _DESIGNS[variant]
    return Cues(train=(cue,) if dsag else (), test=(cue,) if test != "mf" else ())


# Table 3's inference-only rows: "full" trained once, inferred on zG, zL or [zG, zL] (views, methods.register_method).
VIEWS = {"global-joint": "full", "local-joint": "full", "two-streams-fused": "full"}


@register_method("dsa-reid", variants={variant: _cues(variant) for variant in VARIANTS}, views=VIEWS)
def build_dsa_reid(
    *,
    variant: str,
    backbone: str,
    num_classes: int,
    pretrained: bool = True,
    last_stride: int = 1,
    label_smoothing: float = 0.1,
    triplet_margin: float = 0.3,
    local_input: str = "whole",
) -> nn.Module:
    """Every variant of Tables 2-5 (see the module docstring). `local_input` ("whole" | "slices"):
    what each MF-Stream local branch reads (method option; the baselines ignore it)."""
    net = create_backbone(backbone, pretrained=pretrained, last_stride=last_stride)
    if variant.startswith("baseline"):
        return ResNetBaseline(net, num_classes, label_smoothing=label_smoothing, triplet_margin=triplet_margin)
    use_global, use_local, dsag, fusion, test, cue = _DESIGNS[variant]
    return DsaReid(
        net,
        num_classes,
        use_global=use_global,
        use_local=use_local,
        dsag=dsag,
        fusion=fusion,
        test=test,
        cue=cue,
        local_input=local_input,
        label_smoothing=label_smoothing,
        triplet_margin=triplet_margin,
    )
