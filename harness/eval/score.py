"""Score query against gallery features: the metrics of the plain and of the re-ranked distances."""

from __future__ import annotations

import time

import torch

from harness.eval.distance import pairwise_distance
from harness.eval.metrics import evaluate
from harness.eval.rerank import rerank_features


def score(
    query: torch.Tensor,
    gallery: torch.Tensor,
    labels: tuple,
    *,
    protocol: str,
    metric="euclidean",
    device: torch.device,
    extracted: float = 0.0,
    rerank_distance: str = "squared",
) -> dict[bool, tuple[dict, float]]:
    """The metrics of the plain and of the k-reciprocal re-ranked distances between query and
    gallery features, {rerank: (metrics, seconds)}; `labels` are query/gallery pids, then camids.
    Each row's seconds add its own distances and metrics to `extracted`. The metrics also say what
    re-ranking was given (`rerank_distance`, None for the plain row; see rerank_metric)."""
    results = {}
    for rerank in (False, True):
        begin = time.perf_counter()
        if rerank:
            used, name = rerank_metric(metric, rerank_distance)
            distmat = rerank_features(query.to(device), gallery.to(device), metric=used)
        else:
            name, distmat = None, pairwise_distance(query.to(device), gallery.to(device), metric=metric)
        metrics = {**evaluate(distmat, *labels, protocol=protocol), "rerank_distance": name}
        results[rerank] = (metrics, extracted + time.perf_counter() - begin)
    return results


def rerank_metric(metric, rerank_distance: str) -> tuple[object, str]:
    """The distance k-reciprocal re-ranking is given, and its name for the rows.

    The reference implementation (Zhong et al.'s python-version/re_ranking_ranklist.py, which
    torchreid and fast-reid copy) takes distance matrices and squares them itself. torchreid's
    engine and deep-person-reid, the code base of SSP-ReID, hand it their Euclidean distance, which
    is the squared one (``euclidean_squared_distance``; ``distmat.addmm_(1, -2, qf, gf.t())``):
    `"squared"`, the default, does the same; `"euclidean"` hands it the plain distance (what
    reidbench did before; on seeded random features its re-ranked mAP came out 0.2-0.5 points
    lower). It applies to Euclidean features; a method's own distance, or cosine, is re-ranked as is.
    """
    if metric != "euclidean":
        return metric, "own" if callable(metric) else metric
    if rerank_distance == "squared":
        return "sqeuclidean", "squared-euclidean"
    if rerank_distance == "euclidean":
        return "euclidean", "euclidean"
    raise ValueError(f"unknown rerank_distance {rerank_distance!r}; supported: squared, euclidean")
