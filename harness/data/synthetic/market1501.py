"""A synthetic Market-1501 in its exact published layout (the reference layout of every test).

Layout: ``<root>/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/
PPPP_cCsS_FFFFFF_BB.jpg`` -- pid 0001..1501, camera 1..6, sequence 1..6, frame, box index; 64x128
JPEG. Half the ids train, half test; for each (test id, camera) one image is the query and the rest
go to the gallery, which also holds distractors (pid 0000) and junk (pid -1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.synthetic.render import HEIGHT, WIDTH, Camera, make_camera, make_person, make_shot, render, save

ROOT_NAME = "Market-1501-v15.09.15"


def _next_frame(rng: np.random.Generator, frames: np.ndarray, cam: int, seq: int, low: int, high: int) -> int:
    """Advance a (camera, sequence) frame counter: unique, increasing frame numbers make names unique."""
    frames[cam, seq] += rng.integers(low, high)
    return int(frames[cam, seq])


def _write_identity(pid: int, test: bool, cams: list[Camera], frames: np.ndarray, out: Path, seed: int) -> None:
    """Write one person's tracklets (2-6 cameras, 2-5 images each); for test ids one query per camera."""
    rng = np.random.default_rng((seed, 2, pid))
    person = make_person(np.random.default_rng((seed, 3, pid)))
    n_cams = rng.choice((2, 3, 4, 5, 6), p=(0.1, 0.3, 0.3, 0.2, 0.1))
    for c in np.sort(rng.choice(6, n_cams, replace=False)):
        view = ("front", "back", "side")[rng.choice(3, p=cams[c].view_p)]
        facing, seq, n = int(rng.choice((-1, 1))), int(rng.integers(6)), int(rng.integers(2, 6))
        frames[c, seq] += rng.integers(5, 40)
        query = rng.integers(n)
        for k in range(n):
            rendering = render(cams[c], rng, person, make_shot(rng, view, facing))
            folder = "bounding_box_train" if not test else ("query" if k == query else "bounding_box_test")
            name = f"{pid:04d}_c{c + 1}s{seq + 1}_{_next_frame(rng, frames, c, seq, 2, 12):06d}_01.jpg"
            save(rendering, out.parent, f"{out.name}/{folder}/{name}")


def _write_clutter(c: int, cam: Camera, n: int, frames: np.ndarray, out: Path, seed: int) -> None:
    """Gallery distractors (0000: background or badly framed strangers) and junk (-1: blurred near-misses)."""
    rng = np.random.default_rng((seed, 4, c))
    for k in range(2 * n):
        junk, seq = k >= n, int(rng.integers(6))
        stranger = make_person(rng)
        if junk:  # a person mostly outside the box
            shot = make_shot(rng, "front", 1, dx=float(rng.choice((-1, 1)) * rng.uniform(26, 36)))
        else:  # a box too tight around part of a person, or around nobody
            shot = make_shot(rng, "front", 1, scale=rng.uniform(1.5, 2.3), dy=rng.uniform(-60, 60))
            stranger = stranger if rng.random() < 0.5 else None
        rendering = render(cam, rng, stranger, shot)
        img = rendering.image
        if junk:
            img = np.asarray(
                Image.fromarray(img).resize((8, 16), Image.BILINEAR).resize((WIDTH, HEIGHT), Image.BILINEAR)
            )
        frame = _next_frame(rng, frames, c, seq, 1, 30)
        name = f"{'-1' if junk else '0000'}_c{c + 1}s{seq + 1}_{frame:06d}_{rng.integers(1, 6):02d}.jpg"
        save(rendering, out.parent, f"{out.name}/bounding_box_test/{name}", img)


def write_market1501(root: Path | str, *, ids: int = 48, seed: int = 0) -> Path:
    """Write a synthetic dataset in Market-1501's exact published layout under `root`.

    Returns root/"Market-1501-v15.09.15". Same (ids, seed) gives byte-identical files; ids is the
    total count (ids // 2 train, the rest test), sampled from Market's pid range 0001..1501.
    """
    if not 2 <= ids <= 1501:
        raise ValueError(f"ids must be in 2..1501 (Market's pid range), got {ids}")
    out = Path(root) / ROOT_NAME
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng((seed, 0))
    pids = np.sort(rng.choice(np.arange(1, 1502), ids, replace=False))
    test = np.zeros(ids, bool)
    test[rng.permutation(ids)[: ids - ids // 2]] = True
    cams = [make_camera(np.random.default_rng((seed, 1, c))) for c in range(6)]
    frames = np.zeros((6, 6), np.int64)
    for pid, is_test in zip(pids, test):
        _write_identity(int(pid), bool(is_test), cams, frames, out, seed)
    for c, cam in enumerate(cams):
        _write_clutter(c, cam, max(3, int(test.sum()) // 4), frames, out, seed)
    return out
