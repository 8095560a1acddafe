"""SSP-ReID: saliency and semantic parsing maps guide a backbone (Quispe and Pedrini, 2019).

Each subnet is a backbone whose intermediate tap (``Backbone.forward_with_tap``: Res5C for the
ResNets, see SSP-ReID 4.1) is joined with a cue map: "we initially apply a bilinear interpolation
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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods import register_method
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


class CueSubnet(nn.Module):
    """One SSP-ReID stream: global average of the final map joined with the cue-weighted tap."""

    def __init__(self, backbone: Backbone, cue: str, num_classes: int, *, map_scale: float, triplet: bool,
                 label_smoothing: float, triplet_margin: float):
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

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"id": identity_loss(outputs["logits"], pids, self.label_smoothing)}
        if self.triplet:
            terms["triplet"] = batch_hard_triplet(outputs["features"].float(), pids, self.triplet_margin)
        return terms


_SUBNETS = {"s-reid": (("s", "saliency"),), "sp-reid": (("sp", "parsing"),),
            "ssp": (("s", "saliency"), ("sp", "parsing"))}


@register_method("ssp-reid", variants=("ssp", "s-reid", "sp-reid"))
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
    """`s-reid` (saliency subnet), `sp-reid` (parsing subnet) or `ssp` (both, unshared weights).

    `triplet`: None follows SSP-ReID Table 1 for the backbone; True/False force it. The label
    smoothing and the triplet margin are the spec's (the paper: 0.1 and 0.3, the defaults).
    """
    use_triplet = backbone not in CROSS_ENTROPY_ONLY if triplet is None else triplet
    subnets = {
        name: CueSubnet(create_backbone(backbone, pretrained=pretrained, last_stride=last_stride), cue, num_classes,
                        map_scale=map_scale, triplet=use_triplet, label_smoothing=label_smoothing,
                        triplet_margin=triplet_margin)
        for name, cue in _SUBNETS[variant]
    }
    if len(subnets) == 1:
        return next(iter(subnets.values()))
    return SideBySide(subnets)
