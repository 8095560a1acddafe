"""SPReID: human semantic parsing for person re-identification (Kalayeh et al., CVPR 2018).

The baseline ("Model-S/M/L", and the Inception-V3/ResNet rows of Table 3) "simply aggregates the
output activations of the convolutional backbone using global average pooling", trained with a
"multi-class classification (over different identities) objective with softmax cross-entropy";
"final representations before the classifier layer are used" at test time.

SPReID (3.3) adds a second aggregation head: the final activations are pooled by each of the 5
l1-normalised parsing maps ("a matrix multiplication between the output of re-identification
backbone and human semantic parsing where their corresponding spatial domain is flattened"), then
"element-wise max operation over representations of head, upper-body, lower-body and shoes and
concatenate the outcome with the foreground and previously described global representation":
3C wide with foreground (`wfg`), 2C without (`wofg`). Choices where the paper is silent:

- resolutions: "the re-identification backbone ... uses bilinear interpolation to initially scale
  down the input images and then scale up the final activations to match the ones in human
  semantic parsing branch". The model's input (the spec's input_size, SPReID's 512 × 170) is the
  parsing branch's; the backbone sees it scaled by `reid_scale` (default 492/512, i.e. Model-L's
  492 × 164 inside 512 × 170), and its activations are upsampled bilinearly to the parsing grid,
  input / `parsing_stride` (16: the parsing network's output stride, 3.2). The cue's parsing maps
  (at input size) are area-averaged onto that grid and l1-normalised again.
- weight sharing (Table 5): `wfg` has two backbones, one for the global-average head and one for
  the parsing head (the "N" rows, which are Table 4's w/fg numbers); `wfg-shared` uses one for both.
- `combined` is "l2-normalization+concatenation" of a w/fg and a w/o fg model trained separately;
  one cell trains both side by side with independent losses (methods.side_by_side), 5C wide.
- `-ft` variants (`model-l-ft`, `wfg-ft`, `wfg-ft-shared`, `combined-ft`) are the same models as
  without -ft: fine-tuning at 748 × 246 on each target is a recipe matter (the spec's phases).
  `model-s`/`model-m`/`model-l` are one model too, trained at different input sizes.
- loss: softmax cross-entropy only, no triplet ("Unlike recent research works which commonly adopt,
  binary or triplet losses, we train our model using softmax cross-entropy"). The label smoothing
  is the spec's value (jobs/spreid*.toml set 0: the paper has none); the triplet margin is ignored.
- the output stride 32 ("2048 channels with the output stride of 32") is the spec's last_stride = 2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from methods import register_method
from methods.backbones import Backbone, create_backbone
from methods.losses import identity_loss
from methods.side_by_side import SideBySide


def parsing_pool(activations: torch.Tensor, parsing: torch.Tensor, *, foreground: bool) -> torch.Tensor:
    """SPReID's semantic pooling of (B, C, h, w) activations by (B, 5, h, w) l1-normalised maps:
    [foreground, max(head, upper, lower, shoes)] (B, 2C), or the max alone (B, C)."""
    regions = torch.bmm(activations.flatten(2), parsing.flatten(2).transpose(1, 2).to(activations.dtype))  # (B, C, 5)
    parts = regions[:, :, 1:].amax(dim=2)
    return torch.cat([regions[:, :, 0], parts], dim=1) if foreground else parts


class GapBaseline(nn.Module):
    """SPReID's baseline: global average pooling of the final activations, softmax classifier."""

    train_cues: tuple[str, ...] = ()
    test_cues: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone, num_classes: int, *, label_smoothing: float):
        super().__init__()
        self.backbone, self.label_smoothing = backbone, label_smoothing
        self.embedding_dim = backbone.out_channels
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor] | None = None):
        features = self.backbone(images).mean(dim=(2, 3))
        return {"logits": self.classifier(features)} if self.training else features

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"id": identity_loss(outputs["logits"], pids, self.label_smoothing)}


class SPReID(nn.Module):
    """Global average head plus semantic-parsing head, on one shared or two exclusive backbones."""

    train_cues = test_cues = ("parsing",)

    def __init__(self, make_backbone: Callable[[], Backbone], num_classes: int, *, foreground: bool, shared: bool,
                 reid_scale: float, parsing_stride: int, label_smoothing: float):
        super().__init__()
        self.backbone = make_backbone()
        self.parsing_backbone = None if shared else make_backbone()
        self.foreground, self.reid_scale, self.parsing_stride = foreground, reid_scale, parsing_stride
        self.embedding_dim = (3 if foreground else 2) * self.backbone.out_channels
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        self.label_smoothing = label_smoothing

    def features(self, images: torch.Tensor, parsing: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        reid_input = images
        if self.reid_scale != 1:
            size = (max(1, round(h * self.reid_scale)), max(1, round(w * self.reid_scale)))
            reid_input = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        activations = self.backbone(reid_input)
        grid = (max(1, round(h / self.parsing_stride)), max(1, round(w / self.parsing_stride)))
        part_activations = activations if self.parsing_backbone is None else self.parsing_backbone(reid_input)
        upsampled = F.interpolate(part_activations, size=grid, mode="bilinear", align_corners=False)
        maps = F.interpolate(parsing.float(), size=grid, mode="area")
        maps = maps / maps.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        pooled = parsing_pool(upsampled, maps, foreground=self.foreground)
        return torch.cat([activations.mean(dim=(2, 3)), pooled], dim=1)

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor]):
        features = self.features(images, cues["parsing"])
        return {"logits": self.classifier(features)} if self.training else features

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"id": identity_loss(outputs["logits"], pids, self.label_smoothing)}


VARIANTS = ("wfg", "wofg", "combined", "wfg-shared", "model-s", "model-m", "model-l", "model-l-ft",
            "wfg-ft", "wfg-ft-shared", "combined-ft")


@register_method("spreid", variants=VARIANTS)
def build_spreid(
    *,
    variant: str,
    backbone: str,
    num_classes: int,
    pretrained: bool = True,
    last_stride: int = 1,
    label_smoothing: float = 0.0,
    triplet_margin: float = 0.3,
    reid_scale: float = 492 / 512,
    parsing_stride: int = 16,
) -> nn.Module:
    """The GAP baseline (`model-*`) or SPReID (`wfg*`, `wofg`, `combined*`); see the module docstring.

    `triplet_margin` is accepted and ignored (cross-entropy only); `reid_scale` and
    `parsing_stride` place the backbone's input and the parsing grid relative to the input.
    """
    def make_backbone() -> Backbone:
        return create_backbone(backbone, pretrained=pretrained, last_stride=last_stride)

    if variant.startswith("model-"):
        return GapBaseline(make_backbone(), num_classes, label_smoothing=label_smoothing)
    base = variant.removesuffix("-shared").replace("-ft", "")

    def spreid(foreground: bool) -> SPReID:
        return SPReID(make_backbone, num_classes, foreground=foreground, shared=variant.endswith("-shared"),
                      reid_scale=reid_scale, parsing_stride=parsing_stride, label_smoothing=label_smoothing)

    if base == "combined":
        return SideBySide({"wfg": spreid(True), "wofg": spreid(False)})
    return spreid(base == "wfg")
