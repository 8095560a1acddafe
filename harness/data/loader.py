"""Image datasets and loaders for training (P x K batches) and feature extraction (sharded).

A batch is ``(images, pids, camids)`` when no cue is asked for, and ``(images, pids, camids, cues)``
when some are, where ``cues`` maps each cue name to a batched tensor (shapes in the cue registry, cues.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from harness.data import Sample
from harness.data.cues import check_names, load_cue, split_ref
from harness.data.sampler import GlobalBatchSampler
from harness.data.transforms import CueTransform


def train_transform(
    size: tuple[int, int], *, flip: float, padding: int, random_erasing: float, heatmap_stride: int = 16
) -> CueTransform:
    return CueTransform(
        size, train=True, flip=flip, padding=padding, random_erasing=random_erasing, heatmap_stride=heatmap_stride
    )


def test_transform(size: tuple[int, int], *, heatmap_stride: int = 16) -> CueTransform:
    return CueTransform(size, train=False, heatmap_stride=heatmap_stride)


def decode(path: str) -> torch.Tensor:
    """An image file as uint8 (3, H, W)."""
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


class ImageDataset(Dataset):
    """Samples as (image, pid, camid[, cues]); `relabel` maps pids to 0..C-1 for the classifier.

    `cues` names the cue maps to load from `cue_root` (the dataset root), or from each sample's own
    root when it has one (the members of a union); `in_memory` decodes every
    image once, up front, and keeps it as uint8 (the workers share it when they are forked).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: CueTransform,
        relabel: dict[int, int] | None = None,
        *,
        cues: Sequence[str] = (),
        cue_root: str | Path | None = None,
        in_memory: bool = False,
    ):
        self.samples, self.transform, self.relabel = samples, transform, relabel
        self.cues = check_names(cues, "method cues")
        if self.cues and cue_root is None and not all(s.root for s in samples):
            raise ValueError("cues need the dataset root they are filed under")
        self.cue_root = Path(cue_root) if cue_root is not None else None
        self.images = [decode(s.path) for s in samples] if in_memory else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]):
        """`item` is a sample index, or (sample index, seed) to draw its augmentation from that seed."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        sample = self.samples[index]
        image = self.images[index] if self.images is not None else decode(sample.path)
        size = tuple(image.shape[-2:])
        root = Path(sample.root) if sample.root else self.cue_root
        raw = {split_ref(cue)[0]: load_cue(root, cue, sample.cue_key, size) for cue in self.cues}  # by the cue's name
        if seed is None:
            tensor, cues = self.transform(image, raw)
        else:
            with torch.random.fork_rng(devices=[]):  # the process's own CPU generator is left as it was
                torch.default_generator.manual_seed(seed)
                tensor, cues = self.transform(image, raw)
        pid = self.relabel[sample.pid] if self.relabel is not None else sample.pid
        return (tensor, pid, sample.camid, cues) if self.cues else (tensor, pid, sample.camid)


class SeededBatches:
    """A sampler's batches as (sample index, augmentation seed) pairs, for a DataLoader's batch_sampler:
    each image's flip, crop and erasing are drawn from its own seed (see GlobalBatchSampler.image_seeds), so
    they do not depend on which rank or worker loads it, nor on what else is in its slice."""

    def __init__(self, sampler: GlobalBatchSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        s = self.sampler
        for step in range(s.start_step, s.steps):
            yield list(zip(s.batch(step), s.image_seeds(step)))


def train_loader(
    samples: Sequence[Sample],
    sampler: GlobalBatchSampler,
    transform: CueTransform,
    *,
    num_workers: int,
    pin_memory: bool,
    cues: Sequence[str] = (),
    cue_root: str | Path | None = None,
    in_memory: bool = False,
    relabel: bool = True,
) -> DataLoader:
    """The sampler's batches (P x K or uniform), each image augmented from its own seed; pids relabelled to 0..C-1, or taken as
    labels already (`relabel` false: see data.union)."""
    relabel = {pid: label for label, pid in enumerate(sorted({s.pid for s in samples}))} if relabel else None
    return DataLoader(
        ImageDataset(samples, transform, relabel, cues=cues, cue_root=cue_root, in_memory=in_memory),
        batch_sampler=SeededBatches(sampler),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def shard_loader(
    samples: Sequence[Sample],
    transform: CueTransform,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    cues: Sequence[str] = (),
    cue_root: str | Path | None = None,
) -> DataLoader:
    """This rank's contiguous shard of `samples`, in order, for feature extraction."""
    per_rank = -(-len(samples) // world_size)
    shard = list(samples[rank * per_rank : (rank + 1) * per_rank])
    return DataLoader(
        ImageDataset(shard, transform, cues=cues, cue_root=cue_root),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
