"""SSP-ReID: saliency and semantic parsing maps guide a backbone (Quispe and Pedrini, 2019).

Each subnet is a backbone whose intermediate tap (``Backbone.forward_with_tap``) is joined with a
cue map. The tap is "the feature map from an intermediate layer" (3.2): for ResNet-50 and ResNet50-M
res4f (1024 channels, 1/16), as the authors' code joins them (models/ResNet.py, ``x4f``), although
4.1 prints "the output of layer Res5C", which is ResNet-50's final map; methods/backbones.py has
the evidence, and every model's size matches the authors' README (tests/test_ssp_reid.py). The
join: "we initially apply a bilinear interpolation
over the tensor to transform τ ∈ R^{h'×w'×c}. Then, we apply element-wise product between every
channel of the tensor and the map. Finally, we use average pooling to obtain the feature vector v"
(3.2), c values for the saliency map, 5c for the 5 parsing maps. Choices where the paper is silent:

- "joined": v is concatenated after the global representation, the final map's global average
  ("we use a CNN to create a global representation of the person ... take the feature map from an
  intermediate layer and join it with saliency map"), so a subnet's feature is out_channels + c
  (saliency) or out_channels + 5c (parsing) wide. That feature is what the triplet loss compares
  ("the feature vector before softmax layer", Fig. 4), what the added "multi-class classification
  layer" classifies, and the test-time embedding. No BNNeck: the paper has none.
- map size: "We adjust the size of the input to 254 × 128 pixels and saliency/semantic parsing
  maps to 128 × 64 pixels", so maps are area-averaged to `map_scale` = 1/2 of the input size,
  whatever the input size is (how the paper resized them is not stated).
- map values: the paper multiplies by JPPNet's region maps as they come (no normalisation is
  stated), while the harness delivers each parsing region l1-normalised (summing to 1). Each
  region is rescaled to peak 1, which gives back a label map's binary region mask exactly (and a
  probability map whose peak is 1); without it the parsing part would be h'w' = 8192 times smaller
  than the global part. Saliency maps are used as they come, in [0, 1].
- cost: upsampling the tap and multiplying is linear in the tap, so the same v is computed as the
  tap times the map pooled by the transpose of the bilinear resize (A_h^T ω A_w on the tap's grid):
  identical numbers without a (B, c, 128, 64) tensor per map.
- losses, per Table 1: TRIP + CROSSE (batch-hard triplet + label-smoothed cross-entropy, summed)
  for every backbone except Inception-V4 and Xception, which get CROSSE only ("Using TRIP in
  Inception-V4 and Xception raises exploding gradient"); ResNet-18/152 and Inception-V3, not in
  the paper, follow the ResNets. The `triplet` option overrides the table.
- `ssp`: "SP-ReID and S-ReID subnetworks are trained separately", "without sharing weights", and
  "The output of our framework is a feature map". One cell holds both subnets, trained side by
  side on the same batches with independent losses (methods.side_by_side: gradients never mix),
  and embeds an image as the concatenation of the two l2-normalised subnet features.
- cues at test time: the maps are part of the feature, so each subnet needs its cue at test too.
- `backbone`: Tables 3-4's "backbone only" rows, the bare backbone with a classifier and Table 1's
  loss (BackboneOnly), so that each row's gain over its backbone is measured as the paper did.
- batches: the triplet backbones trained with deep-person-reid's RandomIdentitySampler (P x K,
  the authors' train_img_model_xent_htri.py), the cross-entropy-only ones with a plain shuffled
  loader (train_img_model_xent.py: ``DataLoader(..., batch_size=args.train_batch, shuffle=True,
  drop_last=True)``): `[train] sampler = "uniform"` in jobs/ssp-reid-xent.toml.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods import Cues, register_method
from methods.backbones import Backbone, create_backbone
from methods.losses import batch_hard_triplet, identity_loss
from methods.side_by_side import SideBySide

NUM_REGIONS = 5  # foreground, head, upper body, lower body, shoes
CROSS_ENTROPY_ONLY = frozenset({"inception_v4", "xception"})  # SSP-ReID Table 1


def resize_matrix(n_out: int, n_in: int, *, device=None, dtype=None) -> torch.Tensor:
    """(n_out, n_in) weights of torch's 1-D linear resize (align_corners=False); bilinear is their product."""
    eye = torch.eye(n_in, device=device, dtype=dtype)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


def masked_average(tap: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """avg_pool(upsample(tap) * map) for every map: (B, c, h, w) x (B, k, H', W') -> (B, k, c).

    Equal to resizing `tap` bilinearly to (H', W'), multiplying each channel by each map and
    averaging over space, computed on the tap's grid.
    """
    (h, w), (mh, mw) = tap.shape[-2:], maps.shape[-2:]
    a_h = resize_matrix(mh, h, device=tap.device, dtype=maps.dtype)
    a_w = resize_matrix(mw, w, device=tap.device, dtype=maps.dtype)
    pooled = torch.einsum("xi,bkxy,yj->bkij", a_h, maps, a_w)
    return torch.einsum("bcij,bkij->bkc", tap, pooled.to(tap.dtype)) / (mh * mw)


def cue_maps(cue: str, value: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The batch's saliency (B, 1, ...) or parsing (B, 5, ...) maps at `size`; parsing regions at peak 1."""
    maps = F.interpolate(value.float(), size=size, mode="area")
    if cue == "parsing":
        maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return maps


class _Table1Losses:
    """Label-smoothed cross-entropy on the logits, plus the batch-hard triplet on the features where Table 1 says."""

    triplet: bool
    label_smoothing: float
    triplet_margin: float

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"id": identity_loss(outputs["logits"], pids, self.label_smoothing)}
        if self.triplet:
            terms["triplet"] = batch_hard_triplet(outputs["features"].float(), pids, self.triplet_margin)
        return terms


class BackboneOnly(_Table1Losses, nn.Module):
    """Tables 3-4's "backbone only" rows: the backbone's globally averaged final map and a classifier.

    "we observe that backbones produce better results when they are trained with the framework" (4.3)
    compares each subnet with the bare backbone trained the same way: the authors' baselines are
    deep-person-reid's models (models/ResNet.py ``ResNet50``, "Code imported from
    https://github.com/KaiyangZhou/deep-person-reid": ``F.avg_pool2d`` over the final map, ``nn.Linear(2048,
    num_classes)`` with its bias, the pooled vector as the test-time feature and as the triplet's
    input), trained with Table 1's loss for the backbone. No BNNeck, unlike reidbench's
    ``baseline:bnneck``. Its size at Market-1501's 751 classes is the README's "ResNet50 25.04 M".
    """

    train_cues: tuple[str, ...] = ()
    test_cues: tuple[str, ...] = ()

    def __init__(
        self, backbone: Backbone, num_classes: int, *, triplet: bool, label_smoothing: float, triplet_margin: float
    ):
        super().__init__()
        self.backbone = backbone
        self.embedding_dim = backbone.out_channels
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        self.triplet, self.label_smoothing, self.triplet_margin = triplet, label_smoothing, triplet_margin

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor] | None = None):
        features = self.backbone.forward_pooled(images)
        if not self.training:
            return features
        return {"features": features, "logits": self.classifier(features)}


class CueSubnet(_Table1Losses, nn.Module):
    """One SSP-ReID stream: global average of the final map joined with the cue-weighted tap."""

    def __init__(
        self,
        backbone: Backbone,
        cue: str,
        num_classes: int,
        *,
        map_scale: float,
        triplet: bool,
        label_smoothing: float,
        triplet_margin: float,
    ):
        super().__init__()
        self.backbone, self.cue, self.map_scale = backbone, cue, map_scale
        self.train_cues = self.test_cues = (cue,)
        regions = NUM_REGIONS if cue == "parsing" else 1
        self.embedding_dim = backbone.out_channels + regions * backbone.tap_channels
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        self.triplet, self.label_smoothing, self.triplet_margin = triplet, label_smoothing, triplet_margin

    def map_size(self, images: torch.Tensor) -> tuple[int, int]:
        return tuple(max(1, round(s * self.map_scale)) for s in images.shape[-2:])

    def features(self, images: torch.Tensor, cue: torch.Tensor) -> torch.Tensor:
        final, tap = self.backbone.forward_with_tap(images)
        joined = masked_average(tap, cue_maps(self.cue, cue, self.map_size(images)))
        return torch.cat([final.mean(dim=(2, 3)), joined.flatten(1)], dim=1)

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor]):
        features = self.features(images, cues[self.cue])
        if not self.training:
            return features
        return {"features": features, "logits": self.classifier(features)}


_SUBNETS = {
    "ssp": (("s", "saliency"), ("sp", "parsing")),
    "s-reid": (("s", "saliency"),),
    "sp-reid": (("sp", "parsing"),),
    "backbone": (),  # no subnet: the bare backbone (BackboneOnly)
}  # the first is the default variant


def _cues(variant: str) -> Cues:
    """Each subnet's cue, in training and at test time (the maps are part of the feature)."""
    cues = tuple(cue for _, cue in _SUBNETS[variant])
    return Cues(train=cues, test=cues)


# Revision 1: the ResNet taps moved from res5c to res4f, and LIP's socks from the lower body to the
# shoes (harness/data/body_maps.py); cells trained before compute another model.
@register_method("ssp-reid", variants={variant: _cues(variant) for variant in _SUBNETS}, revision=1)
def build_ssp_reid(
    *,
    variant: str,
    backbone: str,
    num_classes: int,
    pretrained: bool = True,
    last_stride: int = 1,
    label_smoothing: float = 0.1,
    triplet_margin: float = 0.3,
    map_scale: float = 0.5,
    triplet: bool | None = None,
) -> nn.Module:
    """`s-reid` (saliency subnet), `sp-reid` (parsing subnet), `ssp` (both, unshared weights) or
    `backbone` (the bare backbone and a classifier, Tables 3-4's "backbone only" rows).

    `triplet`: None follows SSP-ReID Table 1 for the backbone; True/False force it. The label
    smoothing and the triplet margin are the spec's (the paper: 0.1 and 0.3, the defaults).
    """
    use_triplet = backbone not in CROSS_ENTROPY_ONLY if triplet is None else triplet
    if variant == "backbone":
        return BackboneOnly(
            create_backbone(backbone, pretrained=pretrained, last_stride=last_stride),
            num_classes,
            triplet=use_triplet,
            label_smoothing=label_smoothing,
            triplet_margin=triplet_margin,
        )
    subnets = {
        name: CueSubnet(
            create_backbone(backbone, pretrained=pretrained, last_stride=last_stride),
            cue,
            num_classes,
            map_scale=map_scale,
            triplet=use_triplet,
            label_smoothing=label_smoothing,
            triplet_margin=triplet_margin,
        )
        for name, cue in _SUBNETS[variant]
    }
    if len(subnets) == 1:
        return next(iter(subnets.values()))
    return SideBySide(subnets)
