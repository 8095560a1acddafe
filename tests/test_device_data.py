"""The training set kept on the device: the loader's batches exactly without augmentation, and
the loader's augmentations (flip, pad-and-crop, random erasing) when they are on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import Sample
from harness.data.device_batches import DeviceBatches, augment
from harness.data.loader import train_loader, train_transform
from harness.data.sampler import PKBatchSampler

SIZE = (32, 16)
NO_AUGMENTATION = {"flip": 0.0, "padding": 0, "random_erasing": 0.0}


@pytest.fixture
def samples(tmp_path) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for index in range(24):
        path = tmp_path / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(path)  # resized to SIZE on decode
        out.append(Sample(str(path), pid=100 + index // 4, camid=index % 2))
    return out


def sampler(samples) -> PKBatchSampler:
    return PKBatchSampler([s.pid for s in samples], ids_per_batch=2, images_per_id=3, steps=5, seed=0)


def test_without_augmentation_batches_equal_the_loaders(samples):
    on_device = DeviceBatches(samples, sampler(samples), size=SIZE, **NO_AUGMENTATION, device=torch.device("cpu"))
    loader = train_loader(
        samples, sampler(samples), train_transform(SIZE, **NO_AUGMENTATION), num_workers=0, pin_memory=False
    )
    assert len(on_device) == len(loader) == 5
    for (images, pids, camids), (want_images, want_pids, want_camids) in zip(on_device, loader, strict=True):
        assert images.dtype == torch.float32 and images.shape == (6, 3, *SIZE)
        torch.testing.assert_close(images, want_images)
        assert pids.tolist() == want_pids.tolist() and camids.tolist() == want_camids.tolist()
    assert on_device.images.dtype == torch.uint8 and on_device.images.shape == (24, 3, *SIZE)


def normalised(images: torch.Tensor) -> torch.Tensor:
    return augment(images, **NO_AUGMENTATION)


def test_flip_mirrors_every_image_at_probability_one_and_about_half_at_one_half():
    images = torch.randint(0, 256, (200, 3, 8, 6), dtype=torch.uint8)
    torch.testing.assert_close(augment(images, flip=1.0, padding=0, random_erasing=0.0), normalised(images.flip(-1)))
    half = augment(images, flip=0.5, padding=0, random_erasing=0.0, generator=torch.Generator().manual_seed(0))
    flipped = (half == normalised(images.flip(-1))).flatten(1).all(1)
    assert 70 < int(flipped.sum()) < 130


def test_padded_crop_is_a_shifted_window_of_the_zero_padded_image():
    images = torch.randint(1, 256, (300, 3, 10, 8), dtype=torch.uint8)
    out = augment(images, flip=0.0, padding=2, random_erasing=0.0, generator=torch.Generator().manual_seed(0))
    padded = normalised(torch.nn.functional.pad(images, (2, 2, 2, 2)))
    shifts = set()
    for i in range(len(images)):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 10, dx : dx + 8])
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) == 25  # every offset of the 5 x 5 range occurs


def test_random_erasing_zeroes_one_box_of_two_to_thirty_three_percent():
    images = torch.full((400, 3, 64, 32), 200, dtype=torch.uint8)  # normalises to non-zero everywhere
    out = augment(images, flip=0.0, padding=0, random_erasing=0.5, generator=torch.Generator().manual_seed(0))
    erased = out == 0
    assert torch.equal(erased[:, 0], erased[:, 1]) and torch.equal(erased[:, 0], erased[:, 2])  # all channels alike
    fraction = erased[:, 0].float().mean(dim=(1, 2))
    hit = fraction > 0
    assert 150 < int(hit.sum()) < 250
    assert fraction[hit].min() >= 0.015 and fraction[hit].max() <= 0.34
    rows, cols = erased[:, 0].any(dim=2), erased[:, 0].any(dim=1)
    box_area = rows.sum(1) * cols.sum(1)
    assert torch.equal(box_area[hit], erased[hit, 0].sum(dim=(1, 2)))  # one solid rectangle
