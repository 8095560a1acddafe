"""Training and test transforms that move an image and its cue maps together.

Resize, horizontal flip and random crop with padding apply the same geometry to the image and to
every cue, each cue by its geometry kind (harness/data/geometry.py); random erasing and
normalisation touch the image only. Which cue is which kind, and the tensor each becomes, is the
cue's registry entry: the one table is in harness/data/cues.py.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from harness.data.cues import REGISTRY
from harness.data.geometry import MEAN, STD, pad_crop

__all__ = ["MEAN", "STD", "CueTransform"]


class CueTransform:
    """(uint8 image (3, H, W), raw cues from cues.load_cue) -> (normalised image, cue tensors)."""

    def __init__(
        self,
        size: tuple[int, int],
        *,
        train: bool,
        flip: float = 0.5,
        padding: int = 10,
        random_erasing: float = 0.5,
        heatmap_stride: int = 16,
    ):
        self.size, self.train, self.flip, self.padding = tuple(size), train, flip, padding
        self.erase = T.RandomErasing(p=random_erasing, value=0) if train and random_erasing else None
        self.heatmap_stride = heatmap_stride

    def __call__(
        self, image: torch.Tensor, cues: dict[str, np.ndarray]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        flip = bool(self.train and self.flip and torch.rand(()) < self.flip)
        kinds = {name: REGISTRY[name] for name in cues}
        geometry = {name: kinds[name].geometry_of(raw) for name, raw in cues.items()}
        maps = {
            name: kinds[name].tensor(raw, image) for name, raw in cues.items()
        }  # UV-space cues: from the decoded image
        source = tuple(image.shape[-2:])
        image = F.resize(image, list(self.size), antialias=True)
        maps = {name: geometry[name].resize(value, source, self.size) for name, value in maps.items()}
        if flip:
            image = F.horizontal_flip(image)
            maps = {name: geometry[name].flip(value, self.size[1]) for name, value in maps.items()}
        if self.train and self.padding:
            top, left = (int(torch.randint(0, 2 * self.padding + 1, ())) for _ in range(2))
            image = pad_crop(image, self.padding, top, left, self.size)
            maps = {
                name: geometry[name].crop(value, self.padding, top, left, self.size) for name, value in maps.items()
            }
        out = {name: kinds[name].finish(value, self.size, self.heatmap_stride) for name, value in maps.items()}
        image = F.normalize(image.float() / 255, MEAN, STD)
        if self.erase is not None:
            image = self.erase(image)
        return image, out
