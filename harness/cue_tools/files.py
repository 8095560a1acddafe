"""Where a made or imported cue goes, which images still need one, and how it is written.

Every write is atomic (a scratch file in the same folder, then a rename), so a killed run leaves
either a whole cue file or none, and a rerun of the same command skips every image whose cue file
exists and reads back valid (`load_cue`: readable, finite, the image's size): resuming is rerunning.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data import Sample, load_dataset
from harness.data.cues import REGISTRY, CueError, load_cue


def cue_folder(root: Path, cue: str) -> Path:
    """The folder a cue's files are written to and checked in: ``<root>/cues/<cue>/``.

    The one place that names it, so that named cue sources (``cues/parsing@spreid/``) change only
    this function and `load_cue`'s lookup."""
    return Path(root) / "cues" / cue


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image, from its header."""
    with Image.open(path) as image:
        return image.height, image.width


def dataset_images(dataset: str, root: Path) -> list[Sample]:
    """Every image of `dataset` under `root` once (train, query, gallery), in a stable order."""
    reid = load_dataset(dataset, root)
    return list({s.path: s for s in reid.train + reid.query + reid.gallery}.values())


def sample_root(sample: Sample, root: Path) -> Path:
    return Path(sample.root) if sample.root else Path(root)


def is_done(sample: Sample, root: Path, cue: str) -> bool:
    """Whether the image already has a cue file in the cue's first format (the one written here, and read
    first) that reads back valid; a broken one is made again."""
    first = cue_folder(sample_root(sample, root), cue) / (
        str(Path(sample.cue_key).with_suffix("")) + REGISTRY[cue].suffixes[0]
    )
    if not first.is_file():
        return False
    try:
        load_cue(sample_root(sample, root), cue, sample.cue_key, image_size(sample.path))
    except CueError:
        return False
    return True


def pending(samples: Iterable[Sample], root: Path, cue: str) -> list[Sample]:
    """The samples without a valid cue file yet, in their order."""
    return [s for s in samples if not is_done(s, root, cue)]


def write_atomic(root: Path, cue: str, key: str, raw: np.ndarray) -> Path:
    """Write one raw cue in the registry's file format under `cue_folder`, whole or not at all."""
    target_stem = cue_folder(root, cue) / Path(key).with_suffix("")
    target_stem.parent.mkdir(parents=True, exist_ok=True)
    scratch_stem = target_stem.with_name(f".{target_stem.name}.partial-{os.getpid()}")
    scratch = REGISTRY[cue].write(scratch_stem, raw)
    target = target_stem.with_name(target_stem.name + scratch.name[len(scratch_stem.name) :])
    scratch.replace(target)
    return target


class Progress:
    """One progress line, rewritten in place on a terminal and printed every `every` images otherwise."""

    def __init__(self, what: str, total: int, *, every: int = 100, stream=None):
        self.what, self.total, self.every = what, total, every
        self.stream = stream or sys.stderr
        self.done, self.started = 0, time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        tty = self.stream.isatty()
        if tty or self.done == self.total or self.done // self.every != (self.done - count) // self.every:
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate else 0
            line = f"{self.what}: {self.done}/{self.total} images, {rate:.1f} img/s, {left:.0f} s left"
            print(
                ("\r" + line) if tty else line,
                end="\n" if not tty or self.done == self.total else "",
                file=self.stream,
                flush=True,
            )
