"""Ranked lists to look at: `reidbench visrank CELL --test NAME`.

What torchreid's `visrank` and fast-reid's `visualize_result.py` show: each query beside its top-k
gallery images, a green border on a right match and a red one on a wrong match, with the query's
average precision. reidbench puts the plain and the k-reciprocal re-ranked lists side by side (one
PNG per query, two rows) and orders the queries worst-first by their plain AP, so the page opens
on the failures. The page and its PNGs go to `cells/<id>/visrank/<test>/` in the store, where the
HTML report finds and links them.

As in the metrics (harness/eval/metrics.py, Market protocol), gallery images of the query's identity
taken by the query's camera, and junk images (pid -1), are left out of a query's list and its AP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from harness import data
from harness.engine.dist import DistEnv
from harness.engine.evaluate import extract, feature_stride, labels_of
from harness.errors import UserError
from harness.eval.distance import pairwise_distance
from harness.eval.rerank import rerank_features
from harness.eval.score import rerank_metric

_TILE = (64, 128)  # width, height of each image in a grid
_BORDER = 4
_GREEN, _RED, _BLUE = (26, 160, 60), (210, 40, 40), (40, 90, 200)


@dataclass(frozen=True)
class Ranked:
    query: int
    order: np.ndarray  # gallery indices, best first, junk left out
    right: np.ndarray  # bool per entry of `order`
    ap: float


def rank_lists(distmat: np.ndarray, labels: tuple[np.ndarray, ...]) -> list[Ranked]:
    """Each query's gallery ranking without same-camera matches and junk, and its AP."""
    q_pids, g_pids, q_cams, g_cams = labels
    out = []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])) & (g_pids[order] != -1)
        order = order[keep]
        right = g_pids[order] == q_pids[i]
        hits = np.flatnonzero(right)
        ap = float(np.mean((np.arange(len(hits)) + 1) / (hits + 1))) if len(hits) else 0.0
        out.append(Ranked(i, order, right, ap))
    return out


def choose(
    plain: list[Ranked], test_set: data.ReidData, *, worst: int | None, queries: Sequence[str] | None
) -> list[int]:
    """Query indices: those named (file name, path or index), else the `worst` ones by plain AP, worst first."""
    if queries:
        by_name = {Path(s.path).name: i for i, s in enumerate(test_set.query)} | {
            s.path: i for i, s in enumerate(test_set.query)
        }
        chosen = []
        for q in queries:
            index = by_name.get(q, int(q) if q.isdigit() and int(q) < len(test_set.query) else None)
            if index is None:
                raise UserError(
                    f"--queries {q!r} is not a query image of {test_set.name} (give its file name or its index, "
                    f"0 to {len(test_set.query) - 1})."
                )
            chosen.append(index)
        return sorted(chosen, key=lambda i: (plain[i].ap, i))
    return [r.query for r in sorted(plain, key=lambda r: (r.ap, r.query))[: worst or 20]]


def _numpy(x) -> np.ndarray:
    return x.float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _tile(path: str, colour: tuple[int, int, int]) -> Image.Image:
    image = ImageOps.fit(Image.open(path).convert("RGB"), (_TILE[0] - 2 * _BORDER, _TILE[1] - 2 * _BORDER))
    return ImageOps.expand(image, border=_BORDER, fill=colour)


def grid_png(path: Path, test_set: data.ReidData, query: int, lists: dict[str, Ranked], topk: int) -> Path:
    """One PNG: a row per ranking (plain, re-ranked), each the query then its top-k, right green, wrong red."""
    label_h, gap = 16, 12
    width = _TILE[0] * (topk + 1) + gap
    image = Image.new("RGB", (width, len(lists) * (_TILE[1] + label_h)), "white")
    draw = ImageDraw.Draw(image)
    for row, (name, ranked) in enumerate(lists.items()):
        top = row * (_TILE[1] + label_h)
        draw.text((2, top + 2), f"{name}: AP {100 * ranked.ap:.1f}%", fill=(0, 0, 0))
        image.paste(_tile(test_set.query[query].path, _BLUE), (0, top + label_h))
        for k, (g, right) in enumerate(zip(ranked.order[:topk], ranked.right[:topk])):
            image.paste(
                _tile(test_set.gallery[g].path, _GREEN if right else _RED), (_TILE[0] * (k + 1) + gap, top + label_h)
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


@torch.no_grad()
def visrank(
    model: torch.nn.Module,
    info: dict,
    test_set: data.ReidData,
    root: Path,
    out: Path,
    env: DistEnv,
    *,
    cell_id: str,
    topk: int = 10,
    worst: int | None = 20,
    queries: Sequence[str] | None = None,
    batch_size: int = 128,
) -> Path:
    """Write the page and its PNGs under `out`; returns index.html."""
    model.eval()
    features = extract(
        model,
        test_set,
        env,
        root,
        size=tuple(info["input_size"]),
        stride=feature_stride(info["options"]),
        batch_size=batch_size,
        num_workers=0,
    )
    metric = getattr(model, "distance", "euclidean")
    labels = labels_of(test_set)
    q, g = (f.to(env.device) for f in features)
    reranked_on, _ = rerank_metric(metric, info.get("cell", {}).get("train", {}).get("rerank_distance", "squared"))
    lists = {
        "plain": rank_lists(_numpy(pairwise_distance(q, g, metric=metric)), labels),
        "re-ranked": rank_lists(_numpy(rerank_features(q, g, metric=reranked_on)), labels),
    }
    chosen = choose(lists["plain"], test_set, worst=worst, queries=queries)
    for old in out.glob("q*.png"):
        old.unlink()
    sections = []
    for place, i in enumerate(chosen, 1):
        name = f"q{place:03d}.png"
        grid_png(out / name, test_set, i, {k: v[i] for k, v in lists.items()}, topk)
        sample = test_set.query[i]
        sections.append(
            f"<section><h2>#{place} (worst first): query {escape(Path(sample.path).name)}, identity {sample.pid}, camera "
            f"{sample.camid}: AP {100 * lists['plain'][i].ap:.1f}% plain, {100 * lists['re-ranked'][i].ap:.1f}% re-ranked</h2>"
            f'<img src="{name}" alt="ranked list of query {escape(Path(sample.path).name)}"></section>'
        )
    mean = {k: 100 * float(np.mean([r.ap for r in v])) for k, v in lists.items()}
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            f"<title>Ranked lists: cell {cell_id} on {escape(test_set.name)}</title>",
            "<style>body{font-family:'DejaVu Sans',Arial,sans-serif;margin:1.5em;color:#222} h2{font-size:14px;margin:1.2em 0 .3em}"
            " .key span{padding:0 .4em;margin-right:.6em;border:3px solid} img{border:1px solid #ddd}</style></head><body>",
            f"<h1>Ranked lists: {escape(info['method'])}:{escape(info['variant'])} on {escape(info['backbone'])}, "
            f"cell {cell_id}, tested on {escape(test_set.name)}</h1>",
            f"<p>{len(chosen)} of {len(test_set.query)} queries, ordered <b>worst first</b> by their AP without re-ranking; "
            f"each picture shows the plain ranking (top row) and the k-reciprocal re-ranked one (bottom row): the query, then "
            f"its top {topk} gallery images. Mean AP over all queries: {mean['plain']:.1f}% plain, {mean['re-ranked']:.1f}% "
            "re-ranked. Same-camera matches and junk images are left out, as in the metrics.</p>",
            '<p class="key"><span style="border-color:#285ac8">query</span><span style="border-color:#1aa03c">right match</span>'
            '<span style="border-color:#d22828">wrong match</span></p>',
            *sections,
            "</body></html>",
            "",
        ]
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
