"""SPReID's human semantic parsing network (Kalayeh et al., CVPR 2018, §3.2): Inception-V3* + ASPP.

Built from torchvision's Inception-V3 modules and weights, with the paper's changes:

- "we change the stride of the last grid reduction module in the Inception-V3 from 2 to 1
  resulting in an output stride of 16": Mixed_7a runs at stride 1.
- "corresponding convolution filters are replaced with the dilated convolution": every
  convolution of "the last Inception block" is dilated with rate 2. §3.1 counts "three blocks of
  Inception layers separated by two grid reduction modules", so the last block is Mixed_7b and
  Mixed_7c together (a k x 1 or 1 x k filter is dilated along its long side only). As in DeepLab,
  the formerly strided convolutions of Mixed_7a itself keep rate 1.
- "We then remove the global average pooling and add an atrous spatial pyramid pooling
  (rates=3,6,9,12)[7] followed by a 1 x 1 convolution layer as the classifier." Reference [7] is
  DeepLab-v3, and the authors' code (github.com/emrahbasaran/SPReID @bdb5ddf, modelx.py
  `Classifier`) settles its form: an image-pooling branch (global average, 1 x 1 convolution to
  512, tiled back), a 1 x 1 branch (512) and one 3 x 3 atrous branch per rate (256 each), every
  one convolution + BatchNorm + ReLU, concatenated (2048) and projected by a 1 x 1 convolution
  + BatchNorm + ReLU to 1024; the classifier is a 1 x 1 convolution (with bias) to LIP's 20 labels.
  That is `aspp = "authors"`, the default. `aspp = "paper"` is the sentence read literally: the
  four atrous branches only (256 each), projected to 256. (The rates are DeepLab-v2's
  6, 12, 18, 24 at output stride 8, halved for output stride 16.)

Choices the paper leaves open, taken here:

- torchvision's Inception-V3 convolves and pools without padding in its stem and grid
  reductions, so its maps are slightly smaller than 1/2, 1/4 ... of the input. Those layers get
  padding 1 here ("same" padding, as DeepLab's TF models use), so the final map is exactly
  ceil(H/16) x ceil(W/16) and the logits, upsampled bilinearly to the input, line up with the
  labels. The weights are unchanged; torchvision's grid-reduction blocks pool with a functional
  max-pool, so `_GridReduction` restates their three-branch forward with its own pool.
- Without ImageNet weights the layers keep PyTorch's default initialisation (torchvision's
  truncated-normal one takes seconds and matters only for training from scratch).
- Inputs are ImageNet-normalised (as everywhere in reidbench) and mapped to the [-1, 1] range
  Google's Inception weights were trained on, as torchvision does with ``transform_input``.

Not a re-ID method, so not registered: harness.parsing trains and evaluates it on LIP and
writes the 5-region parsing cue maps that SPReID pools with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import inception

NUM_LIP_LABELS = 20
ASPP_RATES = (3, 6, 9, 12)
ASPP_CHANNELS = 256
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_REDUCTION_BRANCHES = {  # torchvision's grid reductions: their convolution branches, in concatenation order
    inception.InceptionB: (("branch3x3",), ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")),
    inception.InceptionD: (
        ("branch3x3_1", "branch3x3_2"),
        ("branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
    ),
}


class _GridReduction(nn.Module):
    """A torchvision grid-reduction block (InceptionB or InceptionD) run at `stride` with `padding`
    on its strided 3 x 3 convolutions and its max-pool; the block's weights are used as they are."""

    def __init__(self, block: nn.Module, *, stride: int, padding: int):
        super().__init__()
        self.block, self.stride, self.padding = block, stride, padding
        self.branches = _REDUCTION_BRANCHES[type(block)]
        for names in self.branches:
            last = getattr(block, names[-1]).conv
            last.stride, last.padding = (stride, stride), (padding, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for names in self.branches:
            y = x
            for name in names:
                y = getattr(self.block, name)(y)
            outputs.append(y)
        outputs.append(F.max_pool2d(x, kernel_size=3, stride=self.stride, padding=self.padding))
        return torch.cat(outputs, 1)


def _dilate(block: nn.Module, rate: int) -> None:
    """Dilate every k x k, 1 x k and k x 1 convolution of `block` along its long side(s), keeping its size."""
    for conv in block.modules():
        if isinstance(conv, nn.Conv2d):
            kh, kw = conv.kernel_size
            conv.dilation = (rate if kh > 1 else 1, rate if kw > 1 else 1)
            conv.padding = (conv.dilation[0] * (kh - 1) // 2, conv.dilation[1] * (kw - 1) // 2)


def _inception_v3_os16(net: torchvision.models.Inception3) -> nn.Sequential:
    """Inception-V3* of SPReID Figure 1: output stride 16, last block dilated, no pooling or classifier."""
    for conv in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_4a_3x3):
        conv.conv.padding = (1, 1)
    for pool in (net.maxpool1, net.maxpool2):
        pool.padding = 1
    for block in (net.Mixed_7b, net.Mixed_7c):
        _dilate(block, 2)
    return nn.Sequential(
        net.Conv2d_1a_3x3,
        net.Conv2d_2a_3x3,
        net.Conv2d_2b_3x3,
        net.maxpool1,
        net.Conv2d_3b_1x1,
        net.Conv2d_4a_3x3,
        net.maxpool2,
        net.Mixed_5b,
        net.Mixed_5c,
        net.Mixed_5d,
        _GridReduction(net.Mixed_6a, stride=2, padding=1),
        net.Mixed_6b,
        net.Mixed_6c,
        net.Mixed_6d,
        net.Mixed_6e,
        _GridReduction(net.Mixed_7a, stride=1, padding=1),
        net.Mixed_7b,
        net.Mixed_7c,
    )


ASPP_STYLES = ("authors", "paper")  # see the module docstring


def _unit(cin: int, cout: int, kernel: int, rate: int) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, padding=rate * (kernel - 1) // 2, dilation=rate, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: one 3 x 3 atrous branch per rate, with (`authors`) an
    image-pooling and a 1 x 1 branch of 512 and a projection to 1024, or (`paper`) alone, projected to 256."""

    def __init__(
        self,
        in_channels: int,
        rates: tuple[int, ...] = ASPP_RATES,
        channels: int = ASPP_CHANNELS,
        style: str = "authors",
    ):
        super().__init__()
        if style not in ASPP_STYLES:
            raise ValueError(f"unknown ASPP style {style!r}; one of {', '.join(ASPP_STYLES)}")
        self.style = style
        wide = style == "authors"
        self.pooling = _unit(in_channels, 512, 1, 1) if wide else None
        self.pointwise = _unit(in_channels, 512, 1, 1) if wide else None
        self.branches = nn.ModuleList(_unit(in_channels, channels, 3, r) for r in rates)
        self.out_channels = 1024 if wide else channels
        self.project = _unit(len(rates) * channels + (1024 if wide else 0), self.out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [branch(x) for branch in self.branches]
        if self.pooling is not None:
            pooled = self.pooling(x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
            parts = [pooled, self.pointwise(x), *parts]
        return self.project(torch.cat(parts, 1))


class ParsingNet(nn.Module):
    """Inception-V3* -> ASPP -> 1 x 1 classifier; `forward` gives per-pixel logits over LIP's 20 labels."""

    output_stride = 16

    def __init__(self, backbone: nn.Sequential, num_labels: int = NUM_LIP_LABELS, aspp: str = "authors"):
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(2048, style=aspp)
        self.classifier = nn.Conv2d(self.aspp.out_channels, num_labels, 1)
        self.num_labels = num_labels
        self.register_buffer("_scale", torch.tensor(_STD).view(1, 3, 1, 1) / 0.5, persistent=False)
        self.register_buffer("_shift", (torch.tensor(_MEAN).view(1, 3, 1, 1) - 0.5) / 0.5, persistent=False)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's (N, 2048, ceil(H/16), ceil(W/16)) map of ImageNet-normalised images."""
        return self.backbone(images * self._scale + self._shift)

    def coarse_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 20, ceil(H/16), ceil(W/16)) logits, before upsampling."""
        return self.classifier(self.aspp(self.forward_features(images)))

    def forward(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, 20, H, W) logits, upsampled bilinearly to `size` (default: the input's)."""
        return F.interpolate(
            self.coarse_logits(images), size=size or images.shape[-2:], mode="bilinear", align_corners=False
        )

    def param_groups(self, backbone_lr: float, aspp_lr: float, classifier_lr: float) -> list[dict]:
        """SPReID §5: "initial learning rates for the Inception-V3 backbone, atrous spatial pyramid
        pooling and the 1 x 1 convolution layer are respectively set to 0.01, 0.1 and 0.1"."""
        return [
            {"params": list(self.backbone.parameters()), "lr": backbone_lr, "name": "backbone"},
            {"params": list(self.aspp.parameters()), "lr": aspp_lr, "name": "aspp"},
            {"params": list(self.classifier.parameters()), "lr": classifier_lr, "name": "classifier"},
        ]


def pretrained_file():
    """torchvision's ImageNet Inception-V3 weights: the `inception_v3` backbone's file, in the same cache
    (`reidbench weights fetch inception_v3` fetches it)."""
    from methods.backbones import pretrained_weights_file

    return pretrained_weights_file("inception_v3")


def build_parsing_net(
    *, pretrained: bool = True, num_labels: int = NUM_LIP_LABELS, aspp: str = "authors"
) -> ParsingNet:
    """SPReID's parsing model (`aspp`: "authors" or "paper", see the module docstring); ImageNet
    weights from the local cache only, never downloaded."""
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    if pretrained:
        state = torch.load(pretrained_file(), map_location="cpu", weights_only=True)
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits.")})
    return ParsingNet(_inception_v3_os16(net), num_labels, aspp)
