"""The synthetic Market-1501 must look like Market to loaders and be learnable, but not trivially."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data.synthetic.market1501 import write_market1501

NAME = re.compile(r"^(-1|\d{4})_c([1-6])s([1-6])_(\d{6})_(\d{2})\.jpg$")
FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


def _index(root: Path) -> dict[str, list[tuple[int, int, Path]]]:
    """(pid, camera, path) per folder, asserting every name is Market-style on the way."""
    out: dict[str, list[tuple[int, int, Path]]] = {}
    for folder in FOLDERS:
        out[folder] = []
        for path in sorted((root / folder).iterdir()):
            m = NAME.match(path.name)
            assert m, f"{folder}/{path.name} is not a Market-1501 file name"
            out[folder].append((int(m[1]), int(m[2]), path))
    return out


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_names_and_images(tmp_path: Path) -> None:
    root = write_market1501(tmp_path, ids=20, seed=0)
    assert root == tmp_path / "Market-1501-v15.09.15"
    assert sorted(p.name for p in root.iterdir()) == sorted(FOLDERS)
    index = _index(root)
    assert all(index[f] for f in FOLDERS)
    for _, _, path in sum(index.values(), []):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 128)


def test_splits_follow_market_protocol(tmp_path: Path) -> None:
    index = _index(write_market1501(tmp_path, ids=21, seed=1))
    train = {pid for pid, _, _ in index["bounding_box_train"]}
    query = [(pid, cam) for pid, cam, _ in index["query"]]
    gallery = [(pid, cam) for pid, cam, _ in index["bounding_box_test"]]
    test_ids = {pid for pid, _ in gallery if pid > 0}
    assert len(train) == 10 and len(test_ids) == 11 and not train & test_ids
    assert all(1 <= pid <= 1501 for pid in train | test_ids)
    assert {pid for pid, _ in query} == test_ids
    assert len(query) == len(set(query)), "more than one query for some (id, camera)"
    assert {(pid, cam) for pid, cam in gallery if pid > 0} <= set(query), "gallery (id, camera) without its query"
    gallery_cams = defaultdict(set)
    for pid, cam in gallery:
        gallery_cams[pid].add(cam)
    for pid, cam in query:
        assert gallery_cams[pid] - {cam}, f"query {pid} c{cam} has no cross-camera gallery match"
    assert {0, -1} <= set(gallery_cams), "gallery lacks distractors (0000) or junk (-1)"
    assert not {0, -1} & (train | {pid for pid, _ in query})


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a, b, c = (write_market1501(tmp_path / name, ids=8, seed=seed) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_rejects_impossible_id_counts(tmp_path: Path) -> None:
    for ids in (1, 1502):
        with pytest.raises(ValueError):
            write_market1501(tmp_path, ids=ids)


def _rank1(fq: np.ndarray, fg: np.ndarray, q: np.ndarray, g: np.ndarray, metric: str) -> float:
    """Cross-camera rank-1 (Market protocol: same id in the same camera does not count)."""
    diff = fq[:, None] - fg[None]
    d = np.abs(diff).sum(-1) if metric == "l1" else np.sqrt((diff**2).sum(-1))
    d[(q[:, None, 0] == g[None, :, 0]) & (q[:, None, 1] == g[None, :, 1])] = np.inf
    return float((g[d.argmin(1), 0] == q[:, 0]).mean())


def _hist(img: np.ndarray) -> np.ndarray:
    """4x4x4 colour histogram of the centre, where the person is."""
    bins = (img[16:112, 16:48] // 64).reshape(-1, 3).astype(int)
    h = np.bincount(bins @ np.array([16, 4, 1]), minlength=64).astype(np.float64)
    return h / h.sum()


def test_identities_learnable_but_not_by_mean_colour(tmp_path: Path) -> None:
    index = _index(write_market1501(tmp_path, ids=48, seed=0))
    q = [(pid, cam, np.asarray(Image.open(p))) for pid, cam, p in index["query"]]
    g = [(pid, cam, np.asarray(Image.open(p))) for pid, cam, p in index["bounding_box_test"] if pid != -1]
    qi, gi = np.array([x[:2] for x in q]), np.array([x[:2] for x in g])
    hq, hg = np.stack([_hist(x[2]) for x in q]), np.stack([_hist(x[2]) for x in g])
    dist = np.abs(hq[:, None] - hg[None]).sum(-1)
    same = (qi[:, None, 0] == gi[None, :, 0]) & (qi[:, None, 1] != gi[None, :, 1])
    assert dist[same].mean() < 0.95 * dist[qi[:, None, 0] != gi[None, :, 0]].mean(), "same id not closer"
    chance = 1 / len(set(qi[:, 0]))
    assert _rank1(hq, hg, qi, gi, "l1") > 2 * chance, "colour histograms carry no identity signal"
    mq, mg = (np.stack([x[2].reshape(-1, 3).mean(0) for x in xs]) for xs in (q, g))
    assert _rank1(mq, mg, qi, gi, "l2") < 0.5, "mean colour alone separates identities: too easy"
