"""Images per second that one data-loading worker delivers: decode plus training augmentation.

Times, in the same run and on the same synthetic Market-1501 (64x128 JPEGs, as the real ones):
- the reference: PIL decode and a plain torchvision v2 pipeline (resize, flip, pad + crop,
  normalise, random erasing), the image only;
- reidbench's ImageDataset with its joint transform, without cues, with each method's cues, with
  all five, and with the decoded images kept in memory (uint8).
One worker is the loop itself (no DataLoader processes), so the figure is per worker; a loader with
W workers on W free cores delivers about W times as much.

    python benchmarks/data.py [--images 800] [--size 256 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from harness import data
from harness.data.loader import ImageDataset, train_transform
from harness.data.synthetic.layouts import write_layout

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CASES = {
    "no cues": (),
    "SPReID: parsing": ("parsing",),
    "SSP-ReID: saliency + parsing": ("saliency", "parsing"),
    "DSA-reID: densepose (24 DSAP)": ("densepose",),
    "GASM: pose + mask": ("pose", "mask"),
    "all five cues": ("saliency", "parsing", "densepose", "pose", "mask"),
}


def reference(samples, size):
    transform = T.Compose(
        [
            T.ToImage(),
            T.Resize(size, antialias=True),
            T.RandomHorizontalFlip(0.5),
            T.Pad(10),
            T.RandomCrop(size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(MEAN, STD),
            T.RandomErasing(p=0.5, value=0),
        ]
    )

    def run():
        for s in samples:
            with Image.open(s.path) as image:
                transform(image.convert("RGB"))

    return run


def ours(samples, size, root, cues, in_memory=False):
    dataset = ImageDataset(
        samples,
        train_transform(size, flip=0.5, padding=10, random_erasing=0.5),
        cues=cues,
        cue_root=root,
        in_memory=in_memory,
    )

    def run():
        for i in range(len(dataset)):
            dataset[i]

    return run


def rate(run, n: int, repeats: int) -> float:
    run()  # warm the page cache and the allocator
    best = min(_timed(run) for _ in range(repeats))
    return n / best


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 128), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker runs single-threaded
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        write_layout("market1501", root, ids=200, seed=0)
        samples = data.load_dataset("market1501", root).train[: args.images]
        size = tuple(args.size)
        n = len(samples)
        print(
            f"{n} synthetic Market-1501 training images (64x128 JPEG), input {size[0]}x{size[1]}, one worker, "
            f"torch {torch.__version__}, {os.cpu_count()} CPUs, best of {args.repeats}"
        )
        ref = rate(reference(samples, size), n, args.repeats)
        print(f"{'reference: PIL + torchvision v2, image only':42s} {ref:8.0f} img/s")
        for label, cues in CASES.items():
            ours_rate = rate(ours(samples, size, root, cues), n, args.repeats)
            print(f"{'reidbench, ' + label:42s} {ours_rate:8.0f} img/s   {ours_rate / ref:5.2f}x reference")
        mem = rate(ours(samples, size, root, (), in_memory=True), n, args.repeats)
        print(f"{'reidbench, no cues, in memory (uint8)':42s} {mem:8.0f} img/s   {mem / ref:5.2f}x reference")


if __name__ == "__main__":
    main()
