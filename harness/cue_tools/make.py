"""`reidbench cues make pose|mask`: run a cue model over every image of a dataset that has no valid cue yet."""

from __future__ import annotations

from collections.abc import Callable
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from harness.cue_tools.files import Progress, cue_folder, dataset_images, image_size, pending, sample_root, write_atomic
from harness.cue_tools.models import MODEL_FOR, CueModel
from harness.data import Sample
from harness.errors import UserError


def load_model(cue_model: CueModel, *, size: int, proposals: int, random_weights: bool) -> torch.nn.Module:
    """The model with its cached COCO weights (never downloaded here), or random weights for tests."""
    if random_weights:
        torch.manual_seed(0)
        return cue_model.build(None, size, proposals).eval()
    path = cue_model.weights.path
    if not path.is_file():
        raise UserError(
            f"cues make {cue_model.cue}: the weights of {cue_model.name} are not cached: expected {path}. "
            f"Run `reidbench weights fetch {cue_model.name}` on a machine with internet access (TORCH_HOME "
            f"must point at the same cache here), or import the papers' own cues with `reidbench cues import`."
        )
    return cue_model.build(path, size, proposals).eval()


class _Images(Dataset):
    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        with Image.open(self.samples[index].path) as image:
            pixels = np.array(image.convert("RGB"))
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), index


def _as_lists(items):
    return [image for image, _ in items], [index for _, index in items]


def batches(samples: list[Sample], batch_size: int) -> list[list[int]]:
    """Indices of `samples` in batches of at most `batch_size` images of one size (segmentation stacks them)."""
    order = sorted(range(len(samples)), key=lambda i: image_size(samples[i].path))
    out = []
    for _, group in groupby(order, key=lambda i: image_size(samples[i].path)):
        group = list(group)
        out += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return out


@torch.no_grad()
def make_cues(
    cue: str,
    dataset: str,
    root: Path,
    *,
    device: torch.device,
    batch_size: int = 8,
    size: int | None = None,
    proposals: int = 1000,
    random_weights: bool = False,
    workers: int = 2,
    model: torch.nn.Module | None = None,
    log: Callable[[str], None] = print,
    progress_stream=None,
) -> tuple[int, int]:
    """Write `cue` for every image of `dataset` under `root` that lacks a valid one: (written, skipped)."""
    cue_model = MODEL_FOR[cue]
    size = size or cue_model.default_size
    samples = dataset_images(dataset, root)
    todo = pending(samples, root, cue)
    log(
        f"cues make {cue}: {len(samples)} {dataset} images, {len(samples) - len(todo)} already have a valid cue; "
        f"{len(todo)} to make with {cue_model.name}{' (random weights)' if random_weights else ''} on {device}, "
        f"into {cue_folder(root, cue)}/"
    )
    if not todo:
        return 0, len(samples)
    if model is None:
        model = load_model(cue_model, size=size, proposals=proposals, random_weights=random_weights)
    model = model.to(device).eval()
    loader = DataLoader(
        _Images(todo),
        batch_sampler=batches(todo, batch_size),
        num_workers=workers,
        collate_fn=_as_lists,
    )
    progress = Progress(f"cues make {cue}", len(todo), stream=progress_stream)
    for images, indices in loader:
        raws = cue_model.run(model, [image.to(device) for image in images], size)
        for raw, index in zip(raws, indices):
            sample = todo[index]
            write_atomic(sample_root(sample, root), cue, sample.cue_key, raw)
        progress.advance(len(indices))
    return len(todo), len(samples) - len(todo)
