"""Image datasets and loaders for training (P x K batches) and feature extraction (sharded)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from harness.data import Sample
from harness.data.sampler import PKBatchSampler

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics


def train_transform(size: tuple[int, int], *, flip: float, padding: int, random_erasing: float) -> T.Compose:
    steps = [T.ToImage(), T.Resize(size, antialias=True), T.RandomHorizontalFlip(flip)]
    if padding:
        steps += [T.Pad(padding), T.RandomCrop(size)]
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(_MEAN, _STD)]
    if random_erasing:
        steps.append(T.RandomErasing(p=random_erasing, value=0))
    return T.Compose(steps)


def test_transform(size: tuple[int, int]) -> T.Compose:
    return T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.ToDtype(torch.float32, scale=True), T.Normalize(_MEAN, _STD)])


class ImageDataset(Dataset):
    """Samples as (image, pid, camid); `relabel` maps pids to 0..C-1 for the classifier."""

    def __init__(self, samples: Sequence[Sample], transform: T.Compose, relabel: dict[int, int] | None = None):
        self.samples, self.transform, self.relabel = samples, transform, relabel

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        sample = self.samples[index]
        with Image.open(sample.path) as image:
            tensor = self.transform(image.convert("RGB"))
        pid = self.relabel[sample.pid] if self.relabel is not None else sample.pid
        return tensor, pid, sample.camid


def train_loader(
    samples: Sequence[Sample], sampler: PKBatchSampler, transform: T.Compose, *, num_workers: int, pin_memory: bool
) -> DataLoader:
    relabel = {pid: label for label, pid in enumerate(sorted({s.pid for s in samples}))}
    return DataLoader(
        ImageDataset(samples, transform, relabel),
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def shard_loader(
    samples: Sequence[Sample], transform: T.Compose, *, rank: int, world_size: int, batch_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """This rank's contiguous shard of `samples`, in order, for feature extraction."""
    per_rank = -(-len(samples) // world_size)
    shard = list(samples[rank * per_rank : (rank + 1) * per_rank])
    return DataLoader(ImageDataset(shard, transform), batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
