"""SCSN: the Saliency-guided Cascaded Suppression Network (Chen et al., CVPR 2020).

A ResNet whose stages 3 and 4 keep stride 1 (the final map is 1/8 of the input), with a residual
dual attention module (RDAM = channel attention CAM + residual spatial attention RSAM) on the
residual branch of every block, an optional non-local multi-stage feature fusion (NMFF) of the
low-level stages into the last one, and a cascade of salient-feature-extraction (SFE) stages: each
stage boosts its most salient horizontal stripes (Y = X + Sal(X)), is pooled (average for the
global stage, max after), reduced by an FC layer and trained with ID (label smoothing) + triplet
losses; the next stage's input is the same map with its most salient stripe zeroed. At test time
the stage features are concatenated.

Variants (Tables 2 and 5/6 of the paper; "B&A" is the backbone with RDAM):
``stages-4`` = B&A + SFE*3 + NMFF(14,24,34) (the paper's best on DukeMTMC and CUHK03, the default),
``stages-3`` = B&A + SFE*2 + NMFF(14,24,34); ``baseline`` (one global stage, no attention) and
``cam``, ``sam``, ``rsam``, ``cam-sam``, ``rdam`` on it; ``sfe-1|2|3`` = B&A with 2, 3, 4 stages,
no NMFF; Table 6: ``no-fusion`` = B&A + SFE*2 (it is Table 6's B, as B+N(14,24,34) there equals
SCSN(3 stages)), and ``nmff-14``, ``nmff-24``, ``nmff-34``, ``nmff-24-34``, ``nmff-14-24-34``
= B&A + SFE*2 + NMFF over those ResNet stage pairs (stage 4 with stage 1, 2 or 3).

Choices where the paper is silent or ambiguous (the sentence each rests on is quoted):

* Eq. 2 prints "A_n = (A_{n-1} + σ(W_n − A_{n-1}))" and says both "σ is a trainable variable
  initialized as 1" and "σ is the sigmoid activation function". Eq. 1 lost its σ and τ the same way
  ("A_c = (W_2 (W_1 M_avg) + W_2 (W_1 M_max))" with "σ, τ denote the Sigmoid and ReLU"), so we read
  the leading bracket as the sigmoid and the inner symbol as the trainable scalar α:
  ``A_n = sigmoid(A_{n-1} + α_n (W_n − A_{n-1}))``, A_0 = 0, one α per block, initialised to 1. At
  initialisation this is exactly the plain spatial attention sigmoid(W_n) that the ``sam`` variant
  ("SAM (without residual update)") uses throughout.
* CAM: "avg and max descriptors ... similar to [44]" (CBAM): a shared two-layer bottleneck
  (reduction ratio 16, CBAM's and SE's) without biases, as eq. 1 has only W1, W2. The spatial
  attention's "convolution layer" is CBAM's 7x7. Both sit on each block's residual branch before
  the addition, as in CBAM; RDAM is in every block of all four ResNet stages.
* SFE descriptor: "a convolutional layer followed by batch normalization and ReLU ... generating a
  compact feature descriptor with the shape of 1 x (H/K) x W": a 1x1 convolution (C -> 1) shared
  by the stripes (1x1, so it never mixes rows of neighbouring stripes). H not divisible by K gives
  stripes of floor/ceil(H/K) rows; H < K is an error.
* Suppression: "B is a binary mask which takes values of the most salient Sal(X^t) to 0". A stripe
  already zeroed has Sal = 0, so the most salient stripe is taken among those not yet suppressed:
  the cascade zeroes a new stripe at each stage (per image).
* Baseline: "We take ResNet50 with the global branch as the baseline": the single global stage
  without an SFE unit (average pooling, FC, ID + triplet); the SFE unit comes with the cascade
  ("We consider backbone's last convolution block followed by a SFE unit as the global (t = 1)
  stage"), so ``sfe-k`` has 1 + k stages, each with its SFE unit.
* FC reduction: "use the FC layer to reduce the vector dimension" (size not given): a linear layer
  to a quarter of the backbone width (512 on ResNet-50, `reduction_dim`) followed by BatchNorm;
  triplet and ID losses see that feature, which is also the stage's test-time embedding.
* NMFF: "F_q = κ_q(F_h), F_k = κ_k(F_l), F_v = κ_v(F_l)" with keys and values pyramid-average-
  pooled (bins 1, 3, 6, 8 as in [54], S = 110); the similarity is scaled by c^-1/2 as in [54].
  Eq. 5's 1x1 convolution κ maps the concatenated F^hl to the backbone width, followed by a
  BatchNorm whose scale starts at zero, and the result is added to F_h (as [54]'s fusion block
  keeps its high-level input), so training starts from the plain backbone's features.
  Channel sizes: "c_f = 2048 and c = 256 for Market1501, and ... 512, c = 64 for the rest three
  datasets": `nmff_channels = (c_f, c)` in ResNet-50 units (default (512, 64)), scaled by the
  backbone width / 2048.
* Strides: "we modified the downsample strides of Stage3 and Stage4 to 1": ResNet layer3 and
  layer4; the builder's `last_stride` is therefore ignored, as is the triplet margin's absence in
  eq. 11 (the spec's `triplet_margin` is used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from methods import register_method
from methods.backbones import create_backbone
from methods.losses import batch_hard_triplet, identity_loss

STRIPES = 8  # "set the number of stripes K = 8"
PYRAMID_BINS = (1, 3, 6, 8)  # pyramid average pooling of NMFF's keys and values, as in [54]
RESNET50_WIDTH = 2048  # nmff_channels are given in ResNet-50 units

_ATTENTION = {  # variant -> (CAM, spatial attention: None | "sam" | "rsam")
    "baseline": (False, None),
    "cam": (True, None),
    "sam": (False, "sam"),
    "rsam": (False, "rsam"),
    "cam-sam": (True, "sam"),
    "rdam": (True, "rsam"),
}
_ALL_STAGES = (1, 2, 3)  # low-level ResNet stages fused into stage 4 by the full NMFF
VARIANTS: dict[str, tuple[bool, str | None, int, tuple[int, ...]]] = {  # -> (CAM, SAM, cascade stages, NMFF)
    "stages-4": (True, "rsam", 4, _ALL_STAGES),
    "stages-3": (True, "rsam", 3, _ALL_STAGES),
    **{name: (cam, sam, 1, ()) for name, (cam, sam) in _ATTENTION.items()},
    "sfe-1": (True, "rsam", 2, ()),
    "sfe-2": (True, "rsam", 3, ()),
    "sfe-3": (True, "rsam", 4, ()),
    "no-fusion": (True, "rsam", 3, ()),
    "nmff-14": (True, "rsam", 3, (1,)),
    "nmff-24": (True, "rsam", 3, (2,)),
    "nmff-34": (True, "rsam", 3, (3,)),
    "nmff-24-34": (True, "rsam", 3, (2, 3)),
    "nmff-14-24-34": (True, "rsam", 3, _ALL_STAGES),
}


class ChannelAttention(nn.Module):
    """CAM, eq. 1: sigmoid(W2 relu(W1 avg) + W2 relu(W1 max)) scales each channel."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True), nn.Linear(hidden, channels, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        return x * weights[:, :, None, None]


class SpatialAttention(nn.Module):
    """SAM / RSAM: a 7x7 convolution of the channel mean and max gives W_n; `residual` applies eq. 2.

    ``forward(x, previous)`` returns (x weighted by A_n, A_n); `previous` is A_{n-1} (None for the
    first block of a stage, A_0 = 0). Without `residual`, A_n = sigmoid(W_n).
    """

    def __init__(self, residual: bool, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.alpha = nn.Parameter(torch.ones(())) if residual else None

    def attention_map(self, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        logits = self.conv(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1))
        if self.alpha is None:
            return torch.sigmoid(logits)
        previous = torch.zeros_like(logits) if previous is None else previous
        return torch.sigmoid(previous + self.alpha * (logits - previous))

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self.attention_map(x, previous)
        return x * attention, attention


def _residual_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, torchvision.models.resnet.Bottleneck):
        return block.bn3(block.conv3(block.relu(block.bn2(block.conv2(out)))))
    return block.bn2(block.conv2(out))


def _width(block: nn.Module) -> int:
    last = block.bn3 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.bn2
    return last.num_features


class AttentiveStage(nn.Module):
    """A ResNet stage whose blocks weight their residual branch by CAM and SAM/RSAM before the sum.

    The RSAM map of each block is refined from the previous block's (eq. 2), so the stage's blocks
    run in one loop that carries it.
    """

    def __init__(self, layer: nn.Sequential, cam: bool, spatial: str | None):
        super().__init__()
        self.blocks = layer
        self.cam = nn.ModuleList(ChannelAttention(_width(b)) for b in layer) if cam else None
        self.spatial = nn.ModuleList(SpatialAttention(spatial == "rsam") for _ in layer) if spatial else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = None
        for n, block in enumerate(self.blocks):
            identity = x if block.downsample is None else block.downsample(x)
            out = _residual_branch(block, x)
            if self.cam is not None:
                out = self.cam[n](out)
            if self.spatial is not None:
                out, attention = self.spatial[n](out, attention)
            x = block.relu(out + identity)
        return x


def pyramid_pool(x: torch.Tensor, bins: tuple[int, ...] = PYRAMID_BINS) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, S): average pooling to each bins x bins grid, flattened and joined."""
    return torch.cat([F.adaptive_avg_pool2d(x, b).flatten(2) for b in bins], dim=2)


class NonLocalFusion(nn.Module):
    """One NMFF pair (eqs. 3-4): queries from the high-level map, pooled keys/values from a low one."""

    def __init__(self, high_channels: int, low_channels: int, value_channels: int, key_channels: int):
        super().__init__()
        self.query = nn.Conv2d(high_channels, key_channels, 1)
        self.key = nn.Conv2d(low_channels, key_channels, 1)
        self.value = nn.Conv2d(low_channels, value_channels, 1)
        self.scale = key_channels**-0.5

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        b, _, h, w = high.shape
        query = self.query(high).flatten(2)  # (B, c, N_h)
        key, value = pyramid_pool(self.key(low)), pyramid_pool(self.value(low))  # (B, c, S), (B, c_f, S)
        similarity = torch.softmax(self.scale * key.transpose(1, 2) @ query, dim=1)  # (B, S, N_h), over S
        return (value @ similarity).view(b, -1, h, w)


class MultiStageFusion(nn.Module):
    """NMFF: fuse the chosen low-level stages into the last one, eq. 5, added to it as a residual."""

    def __init__(self, stage_widths: list[int], stages: tuple[int, ...], value_channels: int, key_channels: int):
        super().__init__()
        self.stages = stages
        high = stage_widths[-1]
        self.pairs = nn.ModuleList(
            NonLocalFusion(high, stage_widths[s - 1], value_channels, key_channels) for s in stages
        )
        self.reduce = nn.Sequential(nn.Conv2d(len(stages) * value_channels, high, 1, bias=False), nn.BatchNorm2d(high))
        nn.init.zeros_(self.reduce[1].weight)  # start as the identity: the backbone's own features

    def forward(self, stage_maps: list[torch.Tensor]) -> torch.Tensor:
        high = stage_maps[-1]
        fused = [pair(high, stage_maps[s - 1]) for pair, s in zip(self.pairs, self.stages)]
        return high + self.reduce(torch.cat(fused, dim=1))


def stripe_index(height: int, stripes: int, device: torch.device | None = None) -> torch.Tensor:
    """The stripe of each of `height` rows: K near-equal horizontal stripes, top to bottom."""
    if height < stripes:
        raise ValueError(
            f"SCSN splits the feature map into K = {stripes} horizontal stripes, but the map is only {height} "
            f"rows high; its height is 1/8 of the input's, so use inputs at least {8 * stripes} pixels high "
            f"([train] input_size)."
        )
    return torch.arange(height, device=device) * stripes // height


class SalientFeatureExtraction(nn.Module):
    """SFE (eqs. 6-7): a 1x1 conv + BN + ReLU descriptor, averaged per stripe to z, softmax to w.

    ``forward(x)`` returns (Y = X + Sal(X), w) with Sal(X) = each stripe of X scaled by its w_i.
    """

    def __init__(self, channels: int, stripes: int = STRIPES):
        super().__init__()
        self.stripes = stripes
        self.descriptor = nn.Sequential(nn.Conv2d(channels, 1, 1, bias=False), nn.BatchNorm2d(1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = stripe_index(x.shape[2], self.stripes, x.device)
        row_means = self.descriptor(x).mean(dim=(1, 3))  # (B, H)
        one_hot = F.one_hot(rows, self.stripes).to(row_means.dtype)  # (H, K)
        z = row_means @ (one_hot / one_hot.sum(dim=0))  # each stripe's mean (B, K)
        weights = torch.softmax(z, dim=1)
        return x + x * weights[:, rows][:, None, :, None], weights


def suppress_most_salient(
    x: torch.Tensor, weights: torch.Tensor, kept: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: zero each image's most salient stripe still kept; returns (X^{t+1}, stripes kept)."""
    most = weights.detach().masked_fill(~kept, float("-inf")).argmax(dim=1)
    kept = kept & ~F.one_hot(most, weights.shape[1]).bool()
    rows = stripe_index(x.shape[2], weights.shape[1], x.device)
    return x * kept[:, rows][:, None, :, None].to(x.dtype), kept


class CascadeStage(nn.Module):
    """One cascade stage's own layers: SFE (none in the one-stage variants), FC + BN, classifier."""

    def __init__(self, channels: int, dim: int, num_classes: int, *, sfe: bool):
        super().__init__()
        self.sfe = SalientFeatureExtraction(channels) if sfe else None
        self.reduce = nn.Sequential(nn.Linear(channels, dim, bias=False), nn.BatchNorm1d(dim))
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)


class SCSN(nn.Module):
    """The network: attentive ResNet stages, optional NMFF, then the suppression cascade.

    Training returns each stage's feature and logits stacked over stages; evaluation returns the
    stage features concatenated, ``len(stages) * reduction_dim`` wide.
    """

    train_cues: tuple[str, ...] = ()
    test_cues: tuple[str, ...] = ()

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        cam: bool,
        spatial: str | None,
        stages: int,
        fusion: tuple[int, ...],
        nmff_channels: tuple[int, int],
        reduction_dim: int | None,
        label_smoothing: float,
        triplet_margin: float,
    ):
        super().__init__()
        if not all(hasattr(backbone, n) for n in ("stem", "layer1", "layer2", "layer3", "layer4")):
            raise ValueError("scsn needs a ResNet backbone (its stem and layer1..layer4), e.g. resnet50")
        for layer in (backbone.layer3, backbone.layer4):  # "the downsample strides of Stage3 and Stage4 to 1"
            block = layer[0]
            strided = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
            strided.stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
        self.stem = backbone.stem
        layers = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
        self.layers = nn.ModuleList(AttentiveStage(layer, cam, spatial) for layer in layers)
        widths = [_width(layer[-1]) for layer in layers]
        channels = widths[-1]
        scale = channels / RESNET50_WIDTH
        value_channels, key_channels = (max(1, round(c * scale)) for c in nmff_channels)
        self.fusion = MultiStageFusion(widths, fusion, value_channels, key_channels) if fusion else None
        dim = reduction_dim or channels // 4
        self.stages = nn.ModuleList(CascadeStage(channels, dim, num_classes, sfe=stages > 1) for _ in range(stages))
        self.embedding_dim = stages * dim
        self.label_smoothing, self.triplet_margin = label_smoothing, triplet_margin

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's final map, fused with the low-level stages when NMFF is on."""
        x, maps = self.stem(images), []
        for layer in self.layers:
            x = layer(x)
            maps.append(x)
        return self.fusion(maps) if self.fusion is not None else x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """The cascade: each stage's reduced feature, stacked (stages, B, dim)."""
        kept = torch.ones(x.shape[0], STRIPES, dtype=torch.bool, device=x.device)
        features = []
        for t, stage in enumerate(self.stages):
            boosted, weights = stage.sfe(x) if stage.sfe is not None else (x, None)
            pooled = boosted.mean(dim=(2, 3)) if t == 0 else boosted.amax(dim=(2, 3))
            features.append(stage.reduce(pooled))
            if t + 1 < len(self.stages):
                x, kept = suppress_most_salient(x, weights, kept)
        return torch.stack(features)

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor] | None = None):
        features = self.forward_head(self.forward_features(images))
        if not self.training:
            return torch.cat(list(features), dim=1)
        logits = torch.stack([stage.classifier(f) for stage, f in zip(self.stages, features)])
        return {"features": features, "logits": logits}

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        """ID + triplet on every stage, all weighted 1 (eq. 12 with intermediate supervision)."""
        terms = {}
        for t, (features, logits) in enumerate(zip(outputs["features"], outputs["logits"]), start=1):
            terms[f"id-{t}"] = identity_loss(logits, pids, self.label_smoothing)
            terms[f"triplet-{t}"] = batch_hard_triplet(features, pids, self.triplet_margin)
        return terms


@register_method("scsn", variants=tuple(VARIANTS))
def build_scsn(
    *,
    variant: str,
    backbone: str,
    num_classes: int,
    pretrained: bool = True,
    last_stride: int = 1,
    label_smoothing: float = 0.1,
    triplet_margin: float = 0.3,
    nmff_channels: tuple[int, int] | list[int] = (512, 64),
    reduction_dim: int | None = None,
) -> SCSN:
    """SCSN on a ResNet. `last_stride` is ignored: stages 3 and 4 always keep stride 1.

    `nmff_channels` = (c_f, c) in ResNet-50 units (§4.1: (2048, 256) for Market-1501, (512, 64)
    otherwise), scaled with the backbone's width; `reduction_dim` is each stage's feature size
    (default: a quarter of the backbone width).
    """
    if len(nmff_channels) != 2 or min(nmff_channels) < 1:
        raise ValueError(f"nmff_channels must be two positive sizes (c_f, c), not {nmff_channels!r}")
    cam, spatial, stages, fusion = VARIANTS[variant]
    net = create_backbone(backbone, pretrained=pretrained, last_stride=1)
    return SCSN(
        net,
        num_classes,
        cam=cam,
        spatial=spatial,
        stages=stages,
        fusion=fusion,
        nmff_channels=tuple(nmff_channels),
        reduction_dim=reduction_dim,
        label_smoothing=label_smoothing,
        triplet_margin=triplet_margin,
    )
