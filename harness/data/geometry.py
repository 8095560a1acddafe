"""How a cue map follows its image through resize, horizontal flip and pad-and-crop.

Every cue is one of four geometry kinds (its entry in harness/data/cues.py says which), and each
kind moves one cue tensor exactly as the transforms move the image:

- a label map (C, H, W), integer labels: resized with nearest-neighbour sampling, so no label is
  invented between two others;
- a probability map (C, H, W), floats: resized bilinearly with antialiasing, as the image is;
- keypoints (K, 3), rows ``x y score`` in pixels: the coordinates are scaled and shifted, a flip
  mirrors x and swaps left and right keypoints (`flip_order`), and a keypoint the crop pushes out of
  the image gets score 0;
- UV-space images, made from the decoded image at its own resolution before any geometry (as
  DSA-reID warps the original image): they live in the body's UV space, not the image's, so resize
  and crop leave them be, and a flip is the entry's own (swap the left and right parts' images).

MEAN and STD normalise the image, and the UV-space images made from its pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics

Size = tuple[int, int]  # (height, width)


def pad_crop(value: torch.Tensor, padding: int, top: int, left: int, size: Size) -> torch.Tensor:
    """The (size) window at (top, left) of `value` zero-padded by `padding` on every side."""
    return F.crop(F.pad(value, [padding]), top, left, size[0], size[1])


class MapGeometry:
    """A (C, H, W) map on the image's pixel grid: label maps (nearest) or probability maps (bilinear)."""

    def __init__(self, name: str, interpolation: T.InterpolationMode, *, antialias: bool):
        self.name, self.interpolation, self.antialias = name, interpolation, antialias

    def resize(self, value: torch.Tensor, source: Size, size: Size) -> torch.Tensor:
        return F.resize(value, list(size), interpolation=self.interpolation, antialias=self.antialias)

    def flip(self, value: torch.Tensor, width: int) -> torch.Tensor:
        return F.horizontal_flip(value)

    def crop(self, value: torch.Tensor, padding: int, top: int, left: int, size: Size) -> torch.Tensor:
        return pad_crop(value, padding, top, left, size)

    def __repr__(self) -> str:
        return self.name


LABEL_MAP = MapGeometry("label map", T.InterpolationMode.NEAREST_EXACT, antialias=False)
PROBABILITY_MAP = MapGeometry("probability map", T.InterpolationMode.BILINEAR, antialias=True)


class Keypoints:
    """(K, 3) rows ``x y score`` in pixels (x right, y down; score 0 = not detected), changed in place."""

    def __init__(self, flip_order: np.ndarray):
        self.flip_order = torch.from_numpy(np.asarray(flip_order))

    def resize(self, value: torch.Tensor, source: Size, size: Size) -> torch.Tensor:
        value[:, 0] *= size[1] / source[1]
        value[:, 1] *= size[0] / source[0]
        return value

    def flip(self, value: torch.Tensor, width: int) -> torch.Tensor:
        value = value[self.flip_order]
        value[:, 0] = torch.where(value[:, 2] > 0, width - value[:, 0], value[:, 0])
        return value

    def crop(self, value: torch.Tensor, padding: int, top: int, left: int, size: Size) -> torch.Tensor:
        value[:, 0] += padding - left
        value[:, 1] += padding - top
        inside = (value[:, 0] >= 0) & (value[:, 0] < size[1]) & (value[:, 1] >= 0) & (value[:, 1] < size[0])
        value[~inside, 2] = 0
        return value

    def __repr__(self) -> str:
        return "keypoints"


class UvSpace:
    """Images in the body's UV space: untouched by resize and crop; `flip` is what a mirror does to them."""

    def __init__(self, flip: Callable[[torch.Tensor], torch.Tensor]):
        self._flip = flip

    def resize(self, value: torch.Tensor, source: Size, size: Size) -> torch.Tensor:
        return value

    def flip(self, value: torch.Tensor, width: int) -> torch.Tensor:
        return self._flip(value)

    def crop(self, value: torch.Tensor, padding: int, top: int, left: int, size: Size) -> torch.Tensor:
        return value

    def __repr__(self) -> str:
        return "UV space"


Geometry = MapGeometry | Keypoints | UvSpace
