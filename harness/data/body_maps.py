"""The body models behind the built-in cues, and the tensors the papers make of them.

LIP's 20 human-parsing labels grouped into SPReID's 5 regions; DensePose's 24 parts, their left/right
mirror, DSA-reID's DSAP images and part crops; the 13 keypoints in GASM's order, their mirror, and
Gaussian heatmaps. The cue registry (harness/data/cues.py) points each cue at what it needs here.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import roi_align

from harness.data.geometry import MEAN, STD

NUM_KEYPOINTS = 13
KEYPOINTS = (
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
KEYPOINT_FLIP = np.asarray([0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11])  # a mirrored person's keypoints
NUM_LIP_LABELS = 20
NUM_DENSEPOSE_PARTS = 24
DENSEPOSE_FLIP = np.arange(NUM_DENSEPOSE_PARTS + 1)  # a mirrored person's parts (0 = background)
for _a, _b in ((3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20), (21, 22), (23, 24)):
    DENSEPOSE_FLIP[[_a, _b]] = [_b, _a]
DSAP_SIZE = 32

# LIP (20 labels) -> the 5 regions of SPReID/SSP-ReID; region 0 (foreground) is every non-background label.
# Neither paper lists the grouping (SPReID: "grouped together to create 5 coarse labels"; SSP-ReID:
# "Head, upper body, lower body, shoes and complete body"); both authors' codes put Socks (8) in the
# shoes: SPReID's (github.com/emrahbasaran/SPReID, modelx.py, ReIDClassifier: shoes = y[18] + y[19] +
# y[8]) and SSP-ReID's (github.com/RQuispeC/saliency-semantic-parsing-reid, dataset_loader.py,
# decode_parsing: "#shoes = socks, leftshoe, rightshoe", mask == 8, 18, 19). The other labels follow
# SPReID's code. SSP-ReID's differs further: Coat (7) in the head (its comment lists "hat, hair,
# sunglasses, coat, face"), and Glove (3) and Scarf (11) in no part, only the foreground; that grouping
# is not offered here (a coat is upper-body clothing in LIP, and the head list reads as a slip).
_HEAD, _UPPER, _LOWER, _SHOES = (1, 2, 4, 13), (3, 5, 6, 7, 10, 11, 14, 15), (9, 12, 16, 17), (8, 18, 19)
LIP_REGION = np.zeros(256, np.uint8)  # LIP label -> 0 background, 1 head, 2 upper, 3 lower body, 4 shoes
for _region, _labels in enumerate((_HEAD, _UPPER, _LOWER, _SHOES), 1):
    LIP_REGION[list(_labels)] = _region


def lip_regions(probabilities: torch.Tensor) -> torch.Tensor:
    """(..., 20, H, W) LIP label probabilities -> (..., 5, H, W) probabilities of foreground (every
    label but background), head, upper body, lower body and shoes: the grouping label PNGs get."""
    region = torch.from_numpy(LIP_REGION[: probabilities.shape[-3]].astype(np.int64))
    groups = torch.stack([region > 0] + [region == r for r in range(1, 5)]).to(probabilities)
    return torch.einsum("rl,...lhw->...rhw", groups, probabilities)


def region_maps(regions: torch.Tensor) -> torch.Tensor:
    """(H, W) region indices 0-4 -> (5, H, W) l1-normalised maps of foreground, head, upper body,
    lower body and shoes (an absent region's map is all zero)."""
    return l1(torch.stack([regions > 0] + [regions == r for r in range(1, 5)]).float())


def l1(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map divided by its sum, so it sums to 1 (an all-zero map stays zero)."""
    return maps / maps.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def dsap_images(pixels: torch.Tensor, iuv: torch.Tensor, size: int = DSAP_SIZE) -> torch.Tensor:
    """DSA-reID 3.1: each body-part pixel (part i, coordinates u, v) copied to position (floor(u S),
    floor(v S)) of DSAP image i (rows U, columns V); unfilled positions keep the image's mean colour."""
    mean = pixels.mean(dim=(1, 2))
    out = mean[:, None].repeat(1, 24 * size * size)
    part = iuv[0].long()
    body = part > 0
    u = (iuv[1][body].long() * size // 255).clamp_max(size - 1)  # floor(u S) with u = U / 255
    v = (iuv[2][body].long() * size // 255).clamp_max(size - 1)
    out[:, (part[body] - 1) * size * size + u * size + v] = pixels[:, body]
    out = out.view(3, 24, size, size).permute(1, 0, 2, 3)
    return (out - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def part_crops(pixels: torch.Tensor, iuv: torch.Tensor, size: int = DSAP_SIZE) -> torch.Tensor:
    """DSA-reID's CSA input: for each DensePose part 1..24 its bounding box in the image, resized to
    size x size (bilinear, roi_align), background inside the box included; an absent part is the
    image's mean colour, as an empty DSAP image is. Normalised like the image."""
    part = iuv[0].long()
    present = torch.zeros(24, dtype=torch.bool)
    boxes = torch.zeros(24, 4)
    for p in torch.unique(part[part > 0]).tolist():
        ys, xs = torch.nonzero(part == p, as_tuple=True)
        boxes[p - 1] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        present[p - 1] = True
    out = pixels.mean(dim=(1, 2))[None, :, None, None].repeat(24, 1, size, size)
    if present.any():
        rois = torch.cat([torch.zeros(int(present.sum()), 1), boxes[present]], dim=1)
        out[present] = roi_align(
            pixels[None], rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True
        )
    return (out - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def heatmaps(keypoints: torch.Tensor, size: tuple[int, int], stride: int, sigma: float = 1.0) -> torch.Tensor:
    """One Gaussian per keypoint on the (H/stride, W/stride) grid of an input of `size`, peak = its score (0: none)."""
    h, w = int(size[0]) // stride, int(size[1]) // stride
    ys = (torch.arange(h, dtype=torch.float32) + 0.5)[:, None]
    xs = (torch.arange(w, dtype=torch.float32) + 0.5)[None]
    x, y, score = (keypoints[:, i, None, None] for i in range(3))
    return score.clamp(0, 1) * torch.exp(-((xs - x / stride) ** 2 + (ys - y / stride) ** 2) / (2 * sigma**2))
