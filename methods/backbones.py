"""Backbones, built from torchvision and timm; each gives its final map, its width and the SSP-ReID tap.

Every backbone maps an H x W image to a ceil(H/32) x ceil(W/32) map, or ceil(H/16) x ceil(W/16)
with ``last_stride=1``, so cue maps that come at the feature-map size (pose heatmaps) fit any of
them. The Inception and Xception stems use unpadded ("valid") convolutions and poolings, which
shrink a 256 x 128 input to 6 x 2 in Inception-V3 (and fail on a side under 75 pixels, 128 x 64
included); here those layers get the padding that keeps the size (a 3x3 window gets 1 on each
side), which changes no weight, only the border of the pretrained filters' inputs, and which
fine-tuning absorbs. Where a down-sampling block pools
with a hard-coded functional call (torchvision's Inception-V3 grid reductions), its input is
zero-padded by one instead: the same thing for the pooled and the directly strided branches.

``last_stride=1`` keeps the resolution of the last down-sampling step (stride 1 instead of 2, no
dilation: Luo et al.'s re-ID trick, as for the ResNets):

- resnet*: res5a's strided 3x3 convolution and its shortcut;
- densenet121: transition3's 2x2 average pooling is dropped (identity), so dense block 4 runs at 1/16;
- inception_v3: the last grid reduction (Mixed_7a): both strided convolutions and its max pooling;
- inception_v4: Reduction-B: both strided convolutions and its max pooling;
- xception: the exit flow's first block: its max pooling and its 1x1 shortcut.

Taps (``forward_with_tap``), the layer SSP-ReID §4.1 joins cue maps to:

- ``res4f`` for ResNet-50 and ResNet50-M: the output of res4 (torchvision's ``layer3``, its sixth
  and last block res4f; 1024 channels, 1/16), as the authors' code taps them, not the "Res5C" that
  §4.1 prints. The paper's own premise is an intermediate layer: "we take the feature map from an
  intermediate layer and join it with saliency map" (3.2), "we use intermediate layers instead of
  the last one since we consider that very deep layer representation encodes too abstract
  information" (2.2), while Res5C is ResNet-50's final map. The authors' released code
  (github.com/RQuispeC/saliency-semantic-parsing-reid, models/ResNet.py: ``ResNet50_salience``,
  ``ResNet50_parsing``, ``ResNet50M_salience``, ``ResNet50M_parsing``) joins the cues to ``x4f =
  self.layers4f(x4e)`` (``base[6][5]``, torchvision ``layer3[5]``) with ``feat_dim`` 3072 / 7168
  (ResNet-50) and 4096 / 8192 (ResNet50-M), and its README's model sizes (25.81 / 28.89 M for
  ResNet50 + S-ReID / SP-ReID, 30.78 / 33.85 M for ResNet50-M) are those of a 1024-channel tap
  (tests/test_ssp_reid.py checks every model's size against them). ResNet-18 and ResNet-152, which
  SSP-ReID does not use, tap res4 too by analogy (``res4b``: 256 channels; ``res4b35``: 1024);
- ``inception_b7`` for Inception-V4: "the output last Inception-B block" (1024 channels, 1/16);
- ``middle_flow`` for Xception: "the output of Middle Flow layer" (block 11, 728 channels, 1/16);
- ``transition2`` for DenseNet121: "the output of the second composite function". DenseNet's paper
  calls H_l (BN-ReLU-conv) a composite function, which would put the tap in the first dense block;
  we read it, as the authors' public code does (it labels torchvision's transition layers
  "composite function" and joins a 1024 + 256 = 1280-wide feature), as the second transition layer
  (BN-ReLU-1x1 conv-2x2 average pool): 256 channels at 1/16, beside the other backbones' taps;
- ``mixed_6e`` for Inception-V3 (SSP-ReID does not use it): by analogy with Inception-V4, the last
  block before the last grid reduction (768 channels, 1/16).

ResNet50-M (Yu et al., "The devil is in the middle", 2018) is ResNet-50 whose mid-level res5a and
res5b outputs, average-pooled and concatenated (4096), pass a fusion layer (linear 4096 -> 1024,
BatchNorm, ReLU) whose output joins the pooled res5c feature: a 3072-d embedding. As a map: res5c
(2048 channels) followed by the 1024 fused channels repeated over the map, so average pooling the
final map gives exactly Yu et al.'s embedding and a per-region pooling sees the fused vector in
every region. Its ImageNet weights are ResNet-50's; the fusion layer starts at random.

Inception-V3, V4 and Xception were trained on inputs scaled to [-1, 1], not on ImageNet-normalised
ones as reidbench feeds them; their first layer converts (a fixed affine map, no parameters).
Randomly initialised ResNets start each residual branch's last BatchNorm at zero (Goyal et al.,
2017); torchvision's Inception-V3 keeps PyTorch's default init when random (its truncated-normal
init takes seconds, and random weights only serve tests, profiling and from-scratch runs).
Pretrained weights are never downloaded as a side effect: see methods/weights.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from methods.weights import MissingWeights, WeightsFile, missing_message, require_cached

__all__ = [
    "Backbone",
    "BackboneInfo",
    "MissingWeights",
    "backbone_info",
    "backbone_names",
    "check_cached",
    "create_backbone",
    "pretrained_weights_file",
    "register_backbone",
]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # how harness/data normalises images


class Backbone(nn.Module):
    """A feature extractor: ``forward(x)`` is the last feature map, ``out_channels`` its width.

    ``forward_with_tap(x)`` returns ``(final map, tap)``: the tap is the named intermediate layer
    that SSP-ReID joins cue maps to (``tap_name``, ``tap_channels`` wide).
    """

    out_channels: int
    tap_channels: int
    tap_name: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tap(x)[0]

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The global-average-pooled embedding, (N, out_channels)."""
        return self(x).mean(dim=(2, 3))


@dataclass(frozen=True)
class BackboneInfo:
    """What `reidbench methods` lists without building the network (a test checks it against the built one)."""

    name: str
    builder: Callable[..., Backbone]
    source: str
    out_channels: int
    tap_name: str
    tap_channels: int
    weights: WeightsFile


_BACKBONES: dict[str, BackboneInfo] = {}


def register_backbone(
    name: str, *, source: str, out_channels: int, tap_name: str, tap_channels: int, weights: WeightsFile
) -> Callable:
    def decorate(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _BACKBONES[name] = BackboneInfo(name, builder, source, out_channels, tap_name, tap_channels, weights)
        return builder

    return decorate


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def backbone_info(name: str) -> BackboneInfo:
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(backbone_names())}")
    return _BACKBONES[name]


def create_backbone(name: str, *, pretrained: bool = False, last_stride: int = 1) -> Backbone:
    info = backbone_info(name)
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, not {last_stride}")
    weights = require_cached(name, info.weights) if pretrained else None
    return info.builder(weights=weights, last_stride=last_stride)


def pretrained_weights_file(name: str) -> Path:
    """The cached ImageNet weights of backbone `name`; MissingWeights says how to fetch them."""
    return require_cached(name, backbone_info(name).weights)


def check_cached(names: list[str]) -> None:
    """One MissingWeights naming every backbone of `names` whose weights are not cached, and the command to fetch them."""
    missing = {n: backbone_info(n).weights.path for n in dict.fromkeys(names)}
    missing = {n: path for n, path in missing.items() if not path.is_file()}
    if missing:
        raise MissingWeights(missing_message(list(missing), list(missing.values())))


# Building blocks: surgery on the networks torchvision and timm build, never a re-written layer.


class _Renormalise(nn.Module):
    """ImageNet-normalised input -> the normalisation `mean`, `std` that the weights were trained with."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        m0, s0, m1, s1 = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD, mean, std))
        self.register_buffer("scale", s0 / s1, persistent=False)
        self.register_buffer("shift", (m0 - m1) / s1, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _pad_to_keep_size(module: nn.Module) -> nn.Module:
    """Give every unpadded odd window (convolution, max pooling) of `module` the padding that keeps the size."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and not isinstance(m.padding, str):
            m.padding = tuple(p or (k - 1) // 2 * d for k, p, d in zip(m.kernel_size, m.padding, m.dilation))
        elif isinstance(m, nn.MaxPool2d) and m.padding == 0 and isinstance(m.kernel_size, int) and m.kernel_size % 2:
            m.padding = m.kernel_size // 2
    return module


def _unstride(module: nn.Module) -> None:
    """Stride 1 for every convolution and max pooling of a down-sampling block (padded to keep the size)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.MaxPool2d):
            m.stride = 1 if isinstance(m, nn.MaxPool2d) else (1, 1)


# ResNets (torchvision)


_RES4_TAP = {2: "res4b", 6: "res4f", 36: "res4b35"}  # res4's last block, in Caffe's names, by its block count


class _TorchvisionResNet(Backbone):
    def __init__(self, net: torchvision.models.ResNet, last_stride: int):
        super().__init__()
        block = net.layer4[0]
        strided = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
        strided.stride = block.downsample[0].stride = (last_stride, last_stride)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features
        self.tap_channels = net.layer4[0].conv1.in_channels  # res4's output feeds res5a
        self.tap_name = _RES4_TAP[len(net.layer3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tap = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.layer4(tap), tap


class _ResNet50M(_TorchvisionResNet):
    """ResNet-50 with Yu et al.'s mid-level fusion: final map = [res5c, fuse(pooled res5a, res5b) everywhere]."""

    FUSED = 1024

    def __init__(self, net: torchvision.models.ResNet, last_stride: int):
        super().__init__(net, last_stride)
        width = self.out_channels
        self.fuse = nn.Sequential(nn.Linear(2 * width, self.FUSED), nn.BatchNorm1d(self.FUSED), nn.ReLU(inplace=True))
        self.out_channels = width + self.FUSED

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tap(x)[0]

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res4f = self.layer3(self.layer2(self.layer1(self.stem(x))))
        res5a = self.layer4[0](res4f)
        res5b = self.layer4[1](res5a)
        res5c = self.layer4[2](res5b)
        fused = self.fuse(torch.cat([res5a.mean(dim=(2, 3)), res5b.mean(dim=(2, 3))], dim=1))
        return torch.cat([res5c, fused[:, :, None, None].expand(-1, -1, *res5c.shape[-2:])], dim=1), res4f


def _resnet(name: str, weights: Path | None, last_stride: int, cls=_TorchvisionResNet) -> Backbone:
    arch = "resnet50" if name == "resnet50m" else name
    net = getattr(torchvision.models, arch)(zero_init_residual=weights is None)
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return cls(net, last_stride)


def _tv(weights: torchvision.models.WeightsEnum) -> WeightsFile:
    return WeightsFile(weights.url, check_hash=True)


_RESNET50 = _tv(torchvision.models.ResNet50_Weights.IMAGENET1K_V1)


@register_backbone(
    "resnet18",
    source="torchvision resnet18",
    out_channels=512,
    tap_name="res4b",
    tap_channels=256,
    weights=_tv(torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
)
def resnet18(*, weights: Path | None, last_stride: int) -> Backbone:
    """A small backbone for quick tests."""
    return _resnet("resnet18", weights, last_stride)


@register_backbone(
    "resnet50", source="torchvision resnet50", out_channels=2048, tap_name="res4f", tap_channels=1024, weights=_RESNET50
)
def resnet50(*, weights: Path | None, last_stride: int) -> Backbone:
    return _resnet("resnet50", weights, last_stride)


@register_backbone(
    "resnet152",
    source="torchvision resnet152",
    out_channels=2048,
    tap_name="res4b35",
    tap_channels=1024,
    weights=_tv(torchvision.models.ResNet152_Weights.IMAGENET1K_V1),
)
def resnet152(*, weights: Path | None, last_stride: int) -> Backbone:
    return _resnet("resnet152", weights, last_stride)


@register_backbone(
    "resnet50m",
    source="torchvision resnet50 + mid-level fusion (Yu et al. 2018)",
    out_channels=3072,
    tap_name="res4f",
    tap_channels=1024,
    weights=_RESNET50,
)
def resnet50m(*, weights: Path | None, last_stride: int) -> Backbone:
    return _resnet("resnet50m", weights, last_stride, cls=_ResNet50M)


# DenseNet-121 (torchvision)


class _DenseNet(Backbone):
    def __init__(self, net: torchvision.models.DenseNet, last_stride: int):
        super().__init__()
        f = net.features
        if last_stride == 1:
            f.transition3.pool = nn.Identity()
        self.to_tap = nn.Sequential(
            f.conv0, f.norm0, f.relu0, f.pool0, f.denseblock1, f.transition1, f.denseblock2, f.transition2
        )
        self.after_tap = nn.Sequential(f.denseblock3, f.transition3, f.denseblock4, f.norm5, nn.ReLU(inplace=True))
        self.out_channels, self.tap_channels, self.tap_name = (
            f.norm5.num_features,
            f.transition2.conv.out_channels,
            "transition2",
        )

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tap = self.to_tap(x)
        return self.after_tap(tap), tap


@register_backbone(
    "densenet121",
    source="torchvision densenet121",
    out_channels=1024,
    tap_name="transition2",
    tap_channels=256,
    weights=_tv(torchvision.models.DenseNet121_Weights.IMAGENET1K_V1),
)
def densenet121(*, weights: Path | None, last_stride: int) -> Backbone:
    tv = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1 if weights is not None else None
    # With the file cached, torchvision reads it from the same cache (and renames its old-style keys).
    return _DenseNet(torchvision.models.densenet121(weights=tv), last_stride)


# Inception-V3 (torchvision)


class _PaddedReduction(nn.Module):
    """A torchvision Inception-V3 grid reduction on a zero-padded input; stride 1 or 2.

    Its max pooling is a functional call with stride 2, so padding the block's input by one is the
    way to keep ceil(H/2); its input is a ReLU output, so zero padding is the pooling's -inf padding.
    Stride 1 (the last reduction with last_stride=1) runs the branches with their strided
    convolutions at stride 1 and pools at stride 1.
    """

    def __init__(self, block: nn.Module, stride: int):
        super().__init__()
        self.block, self.stride = block, stride
        if stride == 1:
            _unstride(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1))
        if self.stride == 2:
            return self.block(x)
        b = self.block  # torchvision's InceptionD: the branches of its forward, pooled at stride 1
        return torch.cat(
            [
                b.branch3x3_2(b.branch3x3_1(x)),
                b.branch7x7x3_4(b.branch7x7x3_3(b.branch7x7x3_2(b.branch7x7x3_1(x)))),
                F.max_pool2d(x, kernel_size=3, stride=1),
            ],
            dim=1,
        )


class _InceptionV3(Backbone):
    def __init__(self, net: torchvision.models.Inception3, last_stride: int):
        super().__init__()
        self.stem = nn.Sequential(
            _Renormalise((0.5,) * 3, (0.5,) * 3),
            _pad_to_keep_size(
                nn.Sequential(
                    net.Conv2d_1a_3x3,
                    net.Conv2d_2a_3x3,
                    net.Conv2d_2b_3x3,
                    net.maxpool1,
                    net.Conv2d_3b_1x1,
                    net.Conv2d_4a_3x3,
                    net.maxpool2,
                )
            ),
            net.Mixed_5b,
            net.Mixed_5c,
            net.Mixed_5d,
        )
        self.to_tap = nn.Sequential(
            _PaddedReduction(net.Mixed_6a, 2), net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e
        )
        self.after_tap = nn.Sequential(_PaddedReduction(net.Mixed_7a, last_stride), net.Mixed_7b, net.Mixed_7c)
        self.out_channels, self.tap_channels, self.tap_name = net.fc.in_features, 768, "mixed_6e"

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tap = self.to_tap(self.stem(x))
        return self.after_tap(tap), tap


@register_backbone(
    "inception_v3",
    source="torchvision inception_v3 (no auxiliary classifier)",
    out_channels=2048,
    tap_name="mixed_6e",
    tap_channels=768,
    weights=_tv(torchvision.models.Inception_V3_Weights.IMAGENET1K_V1),
)
def inception_v3(*, weights: Path | None, last_stride: int) -> Backbone:
    if weights is None:
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    else:  # with the file cached, torchvision reads it from the same cache; the auxiliary classifier is left out
        net = torchvision.models.inception_v3(weights=torchvision.models.Inception_V3_Weights.IMAGENET1K_V1)
    return _InceptionV3(net, last_stride)


# Inception-V4 and Xception (timm)


def _timm(model: str, weights: Path | None) -> nn.Module:
    import timm  # imported here: a second to import, and only these two backbones need it

    if weights is None:
        return timm.create_model(model, pretrained=False)
    return timm.create_model(model, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})


class _InceptionV4(Backbone):
    def __init__(self, net: nn.Module, last_stride: int):
        super().__init__()
        from timm.models.inception_v4 import InceptionB, ReductionB

        stages = list(_pad_to_keep_size(net.features))
        reduction = next(i for i, s in enumerate(stages) if isinstance(s, ReductionB))
        assert isinstance(stages[reduction - 1], InceptionB)
        if last_stride == 1:
            _unstride(stages[reduction])
        self.to_tap = nn.Sequential(_Renormalise((0.5,) * 3, (0.5,) * 3), *stages[:reduction])
        self.after_tap = nn.Sequential(*stages[reduction:])
        self.out_channels, self.tap_channels, self.tap_name = net.num_features, 1024, "inception_b7"

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tap = self.to_tap(x)
        return self.after_tap(tap), tap


# timm keeps Inception-V4's ImageNet weights only on the Hugging Face hub (a test checks these against timm's config).
_INCEPTION_V4 = WeightsFile(
    "https://huggingface.co/timm/inception_v4.tf_in1k/resolve/main/model.safetensors",
    file="timm_inception_v4.tf_in1k.safetensors",
)
_XCEPTION = WeightsFile(
    "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/xception-43020ad28.pth"
)


@register_backbone(
    "inception_v4",
    source="timm inception_v4 (tf_in1k)",
    out_channels=1536,
    tap_name="inception_b7",
    tap_channels=1024,
    weights=_INCEPTION_V4,
)
def inception_v4(*, weights: Path | None, last_stride: int) -> Backbone:
    return _InceptionV4(_timm("inception_v4", weights), last_stride)


class _Xception(Backbone):
    def __init__(self, net: nn.Module, last_stride: int):
        super().__init__()
        _pad_to_keep_size(net)
        if last_stride == 1:
            _unstride(net.block12)
        self.entry = nn.Sequential(
            _Renormalise((0.5,) * 3, (0.5,) * 3),
            net.conv1,
            net.bn1,
            net.act1,
            net.conv2,
            net.bn2,
            net.act2,
            net.block1,
            net.block2,
            net.block3,
        )
        self.middle = nn.Sequential(*(getattr(net, f"block{i}") for i in range(4, 12)))
        self.exit = nn.Sequential(net.block12, net.conv3, net.bn3, net.act3, net.conv4, net.bn4, net.act4)
        self.out_channels, self.tap_channels, self.tap_name = net.num_features, 728, "middle_flow"

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tap = self.middle(self.entry(x))
        return self.exit(tap), tap


@register_backbone(
    "xception",
    source="timm legacy_xception (Chollet's original Xception, tf_in1k)",
    out_channels=2048,
    tap_name="middle_flow",
    tap_channels=728,
    weights=_XCEPTION,
)
def xception(*, weights: Path | None, last_stride: int) -> Backbone:
    return _Xception(_timm("legacy_xception", weights), last_stride)
