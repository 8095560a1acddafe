"""Backbones, built from torchvision; each returns its final feature map and says its width.

Randomly initialised ResNets start each residual branch's last BatchNorm at zero (Goyal et al.,
2017), so that a deep network trained from scratch starts as a shallow one and learns quickly.
Pretrained weights are never downloaded as a side effect: they are read from torch's hub cache
(``$TORCH_HOME/hub/checkpoints``), and a missing file is an error that says where to put it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn


class MissingWeights(RuntimeError):
    """Pretrained weights were asked for but are not in the local cache."""


class Backbone(nn.Module):
    """A feature extractor: ``forward(x)`` is the last feature map, ``out_channels`` its width.

    ``forward_with_tap(x)`` returns ``(final map, tap)``: the tap is the named intermediate layer
    that SSP-ReID joins cue maps to (``tap_name``, ``tap_channels`` wide); for the ResNets it is
    Res5C, the last block, so the tap is the final map itself.
    """

    out_channels: int
    tap_channels: int
    tap_name: str

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


_BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable:
    def decorate(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _BACKBONES[name] = builder
        return builder

    return decorate


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, *, pretrained: bool = False, last_stride: int = 1) -> Backbone:
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(backbone_names())}")
    return _BACKBONES[name](pretrained=pretrained, last_stride=last_stride)


class _TorchvisionResNet(Backbone):
    def __init__(self, net: torchvision.models.ResNet, last_stride: int):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, not {last_stride}")
        block = net.layer4[0]
        strided = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
        strided.stride = block.downsample[0].stride = (last_stride, last_stride)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = self.tap_channels = net.fc.in_features
        self.tap_name = "res5c"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final = self(x)
        return final, final


_IMAGENET_WEIGHTS: dict[str, torchvision.models.WeightsEnum] = {
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
}


def pretrained_weights_file(name: str) -> Path:
    """The cached ImageNet weights of backbone `name`; MissingWeights says where to put them."""
    weights = _IMAGENET_WEIGHTS[name]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise MissingWeights(
            f"ImageNet weights for {name} are not cached: expected {cached}. Download {weights.url} "
            f"on a machine with internet into that folder (compute nodes are often offline), "
            f"or set pretrained = false in the spec's [train] table."
        )
    return cached


def _resnet(name: str, *, pretrained: bool, last_stride: int) -> Backbone:
    net = getattr(torchvision.models, name)(zero_init_residual=not pretrained)
    if pretrained:
        net.load_state_dict(torch.load(pretrained_weights_file(name), map_location="cpu", weights_only=True))
    return _TorchvisionResNet(net, last_stride)


@register_backbone("resnet50")
def resnet50(*, pretrained: bool, last_stride: int) -> Backbone:
    return _resnet("resnet50", pretrained=pretrained, last_stride=last_stride)


@register_backbone("resnet18")
def resnet18(*, pretrained: bool, last_stride: int) -> Backbone:
    """A small backbone for quick tests."""
    return _resnet("resnet18", pretrained=pretrained, last_stride=last_stride)
