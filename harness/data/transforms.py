"""Training and test transforms that move an image and its cue maps together.

Resize, horizontal flip and random crop with padding apply the same geometry to the image and to
every cue (label maps with nearest-neighbour sampling, probability maps bilinearly, keypoints as
coordinates); a flip also swaps left and right keypoints and DensePose parts. LIP labels are grouped
into the 5 regions first, which have no sides, so their left/right swap needs no work. DSAP images
are warped from the decoded image at its own resolution (as DSA-reID warps the original); they live
in UV space, so resize and crop leave them be and a flip swaps the left and right parts' images.
Random erasing and normalisation touch the image only. The cues then take the form methods consume:

==========  =====================  =========================================================
cue         tensor                 meaning
==========  =====================  =========================================================
saliency    (1, H, W) in [0, 1]    saliency at input resolution
parsing     (5, H, W)              foreground, head, upper body, lower body, shoes, each
                                   channel l1-normalised (sums to 1; all-zero if absent)
densepose   (24, 3, 32, 32)        DSA-reID's DSAP images, normalised like the image
densepose-  (24, 3, 32, 32)        each DensePose part's bounding box in the image, resized
crops                              (DSA-reID's CSA); mean colour where a part is absent
pose        (13, H/s, W/s)         Gaussian heatmaps (sigma 1 cell, peak = keypoint score) at
                                   the feature-map size, s = `heatmap_stride` (16 by default)
mask        (1, H, W) in [0, 1]    person-mask probability
==========  =====================  =========================================================
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics
DSAP_SIZE = 32

# LIP (20 labels) -> the 5 regions of SPReID/SSP-ReID; region 0 (foreground) is every non-background label.
_HEAD, _UPPER, _LOWER, _SHOES = (1, 2, 4, 13), (3, 5, 6, 7, 10, 11, 14, 15), (8, 9, 12, 16, 17), (18, 19)
DENSEPOSE_FLIP = np.arange(25)
for _a, _b in ((3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20), (21, 22), (23, 24)):
    DENSEPOSE_FLIP[[_a, _b]] = [_b, _a]
KEYPOINT_FLIP = np.asarray([0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11])
_COARSE = np.zeros(256, np.uint8)  # LIP label -> 0 background, 1 head, 2 upper, 3 lower body, 4 shoes
for _region, _labels in enumerate((_HEAD, _UPPER, _LOWER, _SHOES), 1):
    _COARSE[list(_labels)] = _region


def lip_regions(probabilities: torch.Tensor) -> torch.Tensor:
    """(..., 20, H, W) LIP label probabilities -> (..., 5, H, W) probabilities of foreground (every
    label but background), head, upper body, lower body and shoes: the grouping label PNGs get."""
    region = torch.from_numpy(_COARSE[:probabilities.shape[-3]].astype(np.int64))
    groups = torch.stack([region > 0] + [region == r for r in range(1, 5)]).to(probabilities)
    return torch.einsum("rl,...lhw->...rhw", groups, probabilities)


class CueTransform:
    """(uint8 image (3, H, W), raw cues from cues.load_cue) -> (normalised image, cue tensors)."""

    def __init__(self, size: tuple[int, int], *, train: bool, flip: float = 0.5, padding: int = 10,
                 random_erasing: float = 0.5, heatmap_stride: int = 16):
        self.size, self.train, self.flip, self.padding = tuple(size), train, flip, padding
        self.erase = T.RandomErasing(p=random_erasing, value=0) if train and random_erasing else None
        self.heatmap_stride = heatmap_stride

    def __call__(self, image: torch.Tensor, cues: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        flip = bool(self.train and self.flip and torch.rand(()) < self.flip)
        out = {}
        if "densepose" in cues:
            iuv = torch.from_numpy(np.ascontiguousarray(cues["densepose"].transpose(2, 0, 1)))
            out["densepose"] = dsap_images(image.float() / 255, iuv)
            if flip:
                out["densepose"] = out["densepose"][torch.from_numpy(DENSEPOSE_FLIP[1:] - 1)]
        if "densepose-crops" in cues:
            iuv = torch.from_numpy(np.ascontiguousarray(cues["densepose-crops"].transpose(2, 0, 1)))
            out["densepose-crops"] = part_crops(image.float() / 255, iuv)
            if flip:  # the mirrored person's part i is the mirror image of the partner's crop
                out["densepose-crops"] = out["densepose-crops"][torch.from_numpy(DENSEPOSE_FLIP[1:] - 1)].flip(-1)
        maps = _as_tensors({name: value for name, value in cues.items() if not name.startswith("densepose")})
        image, maps = _resize(image, maps, self.size)
        if flip:
            image, maps = _hflip(image, maps)
        if self.train and self.padding:
            image, maps = _pad_crop(image, maps, self.padding, self.size)
        pixels = image.float() / 255
        out.update({name.removesuffix("_prob"): _finish(name, value, self.size, self.heatmap_stride) for name, value in maps.items()})
        image = F.normalize(pixels, MEAN, STD)
        if self.erase is not None:
            image = self.erase(image)
        return image, out


def _as_tensors(cues: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in cues.items():
        if name == "pose":
            out[name] = torch.as_tensor(value, dtype=torch.float32).clone()
        elif name == "densepose":
            out[name] = torch.from_numpy(np.ascontiguousarray(value.transpose(2, 0, 1)))
        elif name == "parsing" and value.ndim == 3:
            out["parsing_prob"] = torch.from_numpy(value)
        elif name == "parsing":
            out[name] = torch.from_numpy(_COARSE[value])[None]
        else:
            out[name] = torch.from_numpy(value.astype(np.float32) / 255)[None]
    return out


def _is_label(name: str) -> bool:
    return name == "parsing"


def _resize(image: torch.Tensor, maps: dict, size: tuple[int, int]):
    h, w = image.shape[-2:]
    out = {}
    for name, value in maps.items():
        if name == "pose":
            value[:, 0] *= size[1] / w
            value[:, 1] *= size[0] / h
            out[name] = value
        else:
            mode = T.InterpolationMode.NEAREST_EXACT if _is_label(name) else T.InterpolationMode.BILINEAR
            out[name] = F.resize(value, list(size), interpolation=mode, antialias=not _is_label(name))
    return F.resize(image, list(size), antialias=True), out


def _hflip(image: torch.Tensor, maps: dict):
    w = image.shape[-1]
    out = {}
    for name, value in maps.items():
        if name == "pose":
            value = value[torch.from_numpy(KEYPOINT_FLIP)]
            value[:, 0] = torch.where(value[:, 2] > 0, w - value[:, 0], value[:, 0])
        else:
            value = F.horizontal_flip(value)
        out[name] = value
    return F.horizontal_flip(image), out


def _pad_crop(image: torch.Tensor, maps: dict, padding: int, size: tuple[int, int]):
    top, left = (int(torch.randint(0, 2 * padding + 1, ())) for _ in range(2))
    crop = lambda x: F.crop(F.pad(x, [padding]), top, left, size[0], size[1])  # noqa: E731
    out = {}
    for name, value in maps.items():
        if name == "pose":
            value[:, 0] += padding - left
            value[:, 1] += padding - top
            inside = (value[:, 0] >= 0) & (value[:, 0] < size[1]) & (value[:, 1] >= 0) & (value[:, 1] < size[0])
            value[~inside, 2] = 0
            out[name] = value
        else:
            out[name] = crop(value)
    return crop(image), out


def _finish(name: str, value: torch.Tensor, size: tuple[int, int], stride: int):
    if name == "parsing":
        regions = value[0]
        return _l1(torch.stack([regions > 0] + [regions == r for r in range(1, 5)]).float())
    if name == "parsing_prob":
        return _l1(value.float())
    if name == "pose":
        return heatmaps(value, size, stride)
    return value


def _l1(maps: torch.Tensor) -> torch.Tensor:
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
    from torchvision.ops import roi_align

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
        out[present] = roi_align(pixels[None], rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return (out - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def heatmaps(keypoints: torch.Tensor, size: tuple[int, int], stride: int, sigma: float = 1.0) -> torch.Tensor:
    """One Gaussian per keypoint on the (H/stride, W/stride) grid of an input of `size`, peak = its score (0: none)."""
    h, w = int(size[0]) // stride, int(size[1]) // stride
    ys = (torch.arange(h, dtype=torch.float32) + 0.5)[:, None]
    xs = (torch.arange(w, dtype=torch.float32) + 0.5)[None]
    x, y, score = (keypoints[:, i, None, None] for i in range(3))
    return score.clamp(0, 1) * torch.exp(-((xs - x / stride) ** 2 + (ys - y / stride) ** 2) / (2 * sigma**2))


def random_cues(names, batch_size: int, size: tuple[int, int], *, heatmap_stride: int = 16,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A batch of random cue tensors in the formats of the table above, for model tests and profiling:
    the shapes, ranges and normalisation of real cues, none of their structure."""
    h, w = size
    makers = {
        "saliency": lambda: torch.rand(batch_size, 1, h, w, generator=generator),
        "mask": lambda: torch.rand(batch_size, 1, h, w, generator=generator),
        "parsing": lambda: _l1(torch.rand(batch_size * 5, h, w, generator=generator)).view(batch_size, 5, h, w),
        "densepose": lambda: torch.randn(batch_size, 24, 3, DSAP_SIZE, DSAP_SIZE, generator=generator),
        "densepose-crops": lambda: torch.randn(batch_size, 24, 3, DSAP_SIZE, DSAP_SIZE, generator=generator),
        "pose": lambda: torch.rand(batch_size, 13, h // heatmap_stride, w // heatmap_stride, generator=generator),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise KeyError(f"unknown cue(s) {', '.join(unknown)}; known: {', '.join(makers)}")
    return {n: makers[n]() for n in names}
