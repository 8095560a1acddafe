"""The training set decoded once and kept on the device as uint8, augmented there batch by batch.

With `[train] data_on_device = true` the training loop draws its P x K batches from here instead of
a DataLoader: no JPEG decoding or host-side augmentation per step, so loading cannot starve a GPU.
The augmentations are those of `loader.train_transform`, in the same order (flip, zero padding and
a random crop, normalisation, random erasing with zeros), vectorised over the batch; with them
off, a batch is bit-for-bit the loader's. It costs 3 x H x W bytes per training image on the
device (Market-1501 at 256 x 128: 1.3 GB). Works on the CPU too, where it is tested.

Cue maps (a later issue): a method's `train_cues` would be decoded beside the images into more
uint8 tensors indexed by the same sample indices, and `augment` would take them too and apply the
same per-sample flip and crop draws (it draws each once, for the whole batch, to allow that).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from harness.data import Sample
from harness.data.loader import ImageDataset
from harness.data.sampler import GlobalBatchSampler
from harness.data.transforms import MEAN, STD

_ERASE_SCALE, _ERASE_RATIO, _ERASE_TRIES = (0.02, 0.33), (0.3, 3.3), 10  # torchvision's RandomErasing defaults


def decode(
    samples: Sequence[Sample], size: tuple[int, int], device: torch.device, *, num_workers: int = 0
) -> torch.Tensor:
    """Every sample's image resized to `size`, as one (N, 3, H, W) uint8 tensor on `device`."""
    out = torch.empty((len(samples), 3, *size), dtype=torch.uint8, device=device)

    def resize(image: torch.Tensor, cues: dict) -> tuple[torch.Tensor, dict]:  # as the loader's transforms resize
        return T.functional.resize(image, list(size), antialias=True), cues

    loader = DataLoader(ImageDataset(samples, resize), batch_size=256, num_workers=num_workers)
    at = 0
    for images, _, _ in loader:
        out[at : at + len(images)] = images.to(device)
        at += len(images)
    return out


def augment(
    images: torch.Tensor,
    *,
    flip: float,
    padding: int,
    random_erasing: float,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float32, with the training augmentations drawn per sample:
    from `generator`, or with `seeds` (one per image) each image's draws from its own seed, so that
    they do not depend on the rest of the batch (see GlobalBatchSampler.image_seeds)."""
    n, _, h, w = images.shape
    device = images.device
    own = [torch.Generator().manual_seed(s) for s in seeds] if seeds is not None else None

    def uniform(*shape: int) -> torch.Tensor:  # shape[0] is the batch
        if own is None:
            return torch.rand(shape, generator=generator, device=device)
        return torch.stack([torch.rand(shape[1:], generator=g) for g in own]).to(device, non_blocking=True)

    if flip:
        flipped = uniform(n) < flip
        images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
    if padding:
        padded = F.pad(images, (padding,) * 4)
        top = (uniform(n) * (2 * padding + 1)).long().clamp_max(2 * padding)
        left = (uniform(n) * (2 * padding + 1)).long().clamp_max(2 * padding)
        rows = (top[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(w, device=device))[:, None, None, :]
        images = padded[
            torch.arange(n, device=device)[:, None, None, None],
            torch.arange(3, device=device)[None, :, None, None],
            rows,
            cols,
        ]
    mean = torch.tensor(MEAN, device=device)[:, None, None]
    std = torch.tensor(STD, device=device)[:, None, None]
    out = (images.float() / 255 - mean) / std
    if random_erasing:
        out = out.masked_fill(_erase_mask(n, h, w, random_erasing, uniform)[:, None], 0.0)
    return out


def _erase_mask(n: int, h: int, w: int, p: float, uniform) -> torch.Tensor:
    """(N, H, W) boxes to erase, drawn as torchvision's RandomErasing does: the first of up to
    ten (area, aspect) draws that fits the image, none when none fits or with probability 1 - p."""
    area = h * w * (_ERASE_SCALE[0] + (_ERASE_SCALE[1] - _ERASE_SCALE[0]) * uniform(n, _ERASE_TRIES))
    log_lo, log_hi = math.log(_ERASE_RATIO[0]), math.log(_ERASE_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * uniform(n, _ERASE_TRIES))
    bh, bw = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (bh < h) & (bw < w)
    first = fits.float().argmax(dim=1)
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    bh, bw = pick(bh), pick(bw)
    apply = fits.any(dim=1) & (uniform(n) < p)
    top = (uniform(n) * (h - bh + 1)).long()
    left = (uniform(n) * (w - bw + 1)).long()
    rows = torch.arange(h, device=bh.device)[None, :]
    cols = torch.arange(w, device=bh.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + bh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + bw)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]


class DeviceBatches:
    """P x K batches of (images, pids, camids) on `device`, in the sampler's order, each image augmented
    from its own seed as the loader does; a drop-in for train_loader."""

    def __init__(
        self,
        samples: Sequence[Sample],
        sampler: GlobalBatchSampler,
        *,
        size: tuple[int, int],
        flip: float,
        padding: int,
        random_erasing: float,
        device: torch.device,
        num_workers: int = 0,
        relabel: bool = True,  # false: the pids are classifier labels already (harness/data/union.py)
    ):
        relabel = {pid: label for label, pid in enumerate(sorted({s.pid for s in samples}))} if relabel else None
        self.images = decode(samples, size, device, num_workers=num_workers)
        self.pids = torch.tensor([relabel[s.pid] if relabel else s.pid for s in samples], device=device)
        self.camids = torch.tensor([s.camid for s in samples], device=device)
        self.sampler, self.device = sampler, device
        self.options = {"flip": flip, "padding": padding, "random_erasing": random_erasing}

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        s = self.sampler
        for step in range(s.start_step, s.steps):
            index = torch.tensor(s.batch(step)).to(self.device, non_blocking=True)
            images = augment(self.images[index], seeds=s.image_seeds(step), **self.options)
            yield images, self.pids[index], self.camids[index]
