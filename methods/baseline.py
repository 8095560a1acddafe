"""The strong re-ID baseline: backbone, global average pooling, BNNeck, identity classifier.

Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification" (2019): the
triplet loss sees the pooled feature, the classifier sees it after a BatchNorm (the BNNeck), and
the test-time embedding is the BatchNorm output. Losses: cross-entropy with label smoothing plus
batch-hard triplet, summed with equal weights.
"""

from __future__ import annotations

import torch
from torch import nn

from methods import register_method
from methods.backbones import create_backbone
from methods.losses import batch_hard_triplet, identity_loss


class Baseline(nn.Module):
    train_cues: tuple[str, ...] = ()
    test_cues: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module, num_classes: int, *, label_smoothing: float, triplet_margin: float):
        super().__init__()
        self.backbone = backbone
        self.embedding_dim = backbone.out_channels
        self.bnneck = nn.BatchNorm1d(self.embedding_dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: no shift, so the classifier sees a centred feature
        self.classifier = nn.Linear(self.embedding_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.label_smoothing, self.triplet_margin = label_smoothing, triplet_margin

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward_head(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = feature_map.mean(dim=(2, 3))
        return pooled, self.bnneck(pooled)

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor] | None = None):
        pooled, embedding = self.forward_head(self.forward_features(images))
        if not self.training:
            return embedding
        return {"features": pooled, "logits": self.classifier(embedding)}

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "id": identity_loss(outputs["logits"], pids, self.label_smoothing),
            "triplet": batch_hard_triplet(outputs["features"], pids, self.triplet_margin),
        }


@register_method("baseline", variants=("bnneck",))
def build_baseline(
    *,
    variant: str,
    backbone: str,
    num_classes: int,
    pretrained: bool = True,
    last_stride: int = 1,
    label_smoothing: float = 0.1,
    triplet_margin: float = 0.3,
) -> Baseline:
    net = create_backbone(backbone, pretrained=pretrained, last_stride=last_stride)
    return Baseline(net, num_classes, label_smoothing=label_smoothing, triplet_margin=triplet_margin)
