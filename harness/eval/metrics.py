"""Re-identification metrics (CMC, mAP, mINP) under each dataset's protocol.

:func:`evaluate` scores a ``(Nq, Ng)`` distance matrix (distances come from
:func:`harness.eval.distance.pairwise_distance`, re-exported here, or from
:mod:`harness.eval.rerank`).  Protocols, by name:

* ``market`` -- Market-1501, DukeMTMC-reID, MSMT17, CUHK03 767/700: see below.
* ``occluded`` -- Occluded-REID: occluded queries against a whole-body gallery,
  scored as ``market``; the reader's camid is the image's index within its person
  (FastReID's OccludedREID loader, see harness/data/occluded.py), so the
  whole-body image sharing the query's index is left out, as FastReID does.
* ``cuhk03-classic`` and ``cuhk01`` -- single-gallery-shot CMC over seeded
  random gallery samplings: see "Single-shot protocols" below.

The ``market`` protocol follows the public Market-1501 evaluation code
(Zheng et al. 2015, and the widely copied ``eval_market1501`` port), with one
deliberate tightening: ties in distance are broken by gallery index (a stable
sort).  The reference code uses an unstable sort, so its scores can change
with the sort implementation whenever two gallery items are exactly equally
far from a query; float32 distances tie surprisingly often (a dozen pairs per
query row at Market scale), so we make the order deterministic instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from harness.eval.distance import pairwise_distance  # noqa: F401  (re-exported: part of this module's API)

# Queries scored per vectorised block.  Scratch memory per block is about
# 50 bytes x block x Ng (~200 MB for Market's 15913-item gallery); larger
# blocks do not get faster because the work is already memory-bound.
_QUERY_BLOCK = 256
# Query blocks scored at once (each needs its own ~200 MB of scratch at Market size).
_THREADS = min(4, os.cpu_count() or 1)

# Pids that the Market-1501 protocol gives a meaning to in the gallery.
_JUNK_PID = -1  # removed from the ranking ("junk" images)
# Distractors (pid 0) need no special code: they never equal a real query
# pid, so they stay in the ranking as wrong matches.  Like the reference
# code, matching is plain pid equality, so datasets whose loaders use 0 as a
# real (0-based) identity still score correctly.


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    protocol: str = "market",
    max_rank: int = 50,
) -> dict:
    """Score a ``(Nq, Ng)`` distance matrix under a dataset's evaluation protocol.

    Inputs may be numpy arrays, torch tensors (CPU or GPU) or sequences.
    Returns ``mAP``, ``mAP_official``, ``mINP``, ``rank1``, ``rank5``, ``rank10``
    (python floats, fractions in [0, 1]), ``cmc`` (float64 array of length
    ``max_rank``), ``num_valid_queries`` and ``num_queries`` (ints).

    Two average precisions come from the same ranking. ``mAP`` is the mean of
    the precision at each true match (torchreid's and fast-reid's
    ``eval_market1501``: ``AP = (cumsum / rank * matches).sum() / num_rel``).
    ``mAP_official`` is what the official Market-1501 evaluation code computes
    (Zheng et al. 2015, ``compute_AP.m``, copied by Zhong et al.'s re-ranking
    repository and by the Python ports such as ``compute_mAP`` in
    Person_reID_baseline_pytorch): ``ap += (recall - old_recall) *
    (old_precision + precision) / 2`` over the kept ranking, a trapezoid under
    the precision-recall curve starting from precision 1. With the i-th true
    match (from 1) at rank r among the kept items, each match adds
    ``(i / r + (i - 1) / (r - 1)) / 2 / num_rel``, the second term being 1
    when r = 1: never more than ``mAP``, less by half the precision lost at
    each match.

    A query is *valid* when at least one true match survives the protocol's
    removals; invalid queries are skipped as in the reference code, and a
    ``ValueError`` is raised if none is valid (an all-skipped evaluation has
    no meaningful score, and silently returning zeros would hide a label bug).
    """
    evaluator = _protocol_evaluator(protocol)
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank: must be a positive int, got {max_rank!r}")
    dist = _as_distmat(distmat)
    num_q, num_g = dist.shape
    qp = _as_labels(q_pids, "q_pids", num_q, "distmat rows")
    gp = _as_labels(g_pids, "g_pids", num_g, "distmat columns")
    qc = _as_labels(q_camids, "q_camids", num_q, "distmat rows")
    gc = _as_labels(g_camids, "g_camids", num_g, "distmat columns")
    return evaluator(dist, qp, gp, qc, gc, max_rank)


_Evaluator = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], dict]


def _protocol_evaluator(protocol: str) -> _Evaluator:
    """Map a protocol name to its scoring function (add new protocols here)."""
    evaluators: dict[str, _Evaluator] = {
        "market": _evaluate_market,
        "occluded": _evaluate_occluded,
        "cuhk03-classic": evaluate_cuhk03_classic,
        "cuhk01": evaluate_cuhk01,
    }
    if protocol not in evaluators:
        raise ValueError(f"protocol: unknown protocol {protocol!r}; valid protocols are {sorted(evaluators)}")
    return evaluators[protocol]


def _evaluate_market(
    dist: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int,
    *,
    same_camera_removal: bool = True,
) -> dict:
    """Market-1501 protocol: drop junk and same-camera true matches, keep distractors.

    Works on blocks of queries so memory is bounded by ``_QUERY_BLOCK x Ng``
    regardless of the number of queries.
    """
    g_pids, g_camids = _narrow(g_pids), _narrow(g_camids)  # half the memory traffic of the gathers below

    def score(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stop = min(start + _QUERY_BLOCK, dist.shape[0])
        order = _stable_argsort_rows(dist[start:stop])
        ranked_pids = g_pids[order]
        same_pid = ranked_pids == q_pids[start:stop, None]
        keep = ranked_pids != _JUNK_PID
        if same_camera_removal:
            keep &= ~(same_pid & (g_camids[order] == q_camids[start:stop, None]))
        return _ranking_metrics(same_pid & keep, keep)

    # numpy releases the GIL in its sorts and array loops, so blocks run in parallel threads.
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        parts = list(pool.map(score, range(0, dist.shape[0], _QUERY_BLOCK)))
    ap, ap_official, inp, first_hit = (np.concatenate(p) for p in zip(*parts))
    return _summarise(ap, ap_official, inp, first_hit, max_rank)


def _evaluate_occluded(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int) -> dict:
    """Occluded-REID protocol: ``market``'s rules on the reader's index-as-camid labels (module docstring)."""
    return _evaluate_market(dist, q_pids, g_pids, q_camids, g_camids, max_rank)


def _narrow(labels: np.ndarray) -> np.ndarray:
    """int32 labels when every value fits (comparisons give the same answers), else unchanged."""
    info = np.iinfo(np.int32)
    fits = labels.size == 0 or (labels.min() >= info.min and labels.max() <= info.max)
    return labels.astype(np.int32) if fits else labels


def _ranking_metrics(good: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-query AP, official AP (see :func:`evaluate`), INP and 0-based rank of the first hit for one block.

    ``good`` marks true matches and ``keep`` every gallery item that stays in
    the ranking, both ``(B, Ng)`` in ranked order.  Removed items are
    "compressed away" by ranking positions as ``cumsum(keep)``, so nothing
    is ever physically deleted.  Queries without a true match get NaN AP/INP
    and first-hit rank -1; :func:`_summarise` filters them out.
    """
    position = np.cumsum(keep, axis=1, dtype=np.int32)  # 1-based rank among kept items (Ng < 2**31)
    hits = np.cumsum(good, axis=1, dtype=np.int32)  # true matches seen so far
    num_rel = hits[:, -1]
    rows, cols = np.nonzero(good)
    hit, rank = hits[rows, cols], position[rows, cols]
    precision = hit / rank  # float64 precision at each hit
    before = np.where(rank > 1, (hit - 1) / np.maximum(rank - 1, 1), 1.0)  # ... and at the kept item before it
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.bincount(rows, weights=precision, minlength=good.shape[0]) / num_rel
        ap_official = np.bincount(rows, weights=(precision + before) / 2, minlength=good.shape[0]) / num_rel
        first_col = np.argmax(good, axis=1)
        last_col = good.shape[1] - 1 - np.argmax(good[:, ::-1], axis=1)
        block_rows = np.arange(good.shape[0])
        inp = num_rel / position[block_rows, last_col]
    first_hit = np.where(num_rel > 0, position[block_rows, first_col] - 1, -1)
    return ap, ap_official, inp, first_hit


def _summarise(ap: np.ndarray, ap_official: np.ndarray, inp: np.ndarray, first_hit: np.ndarray, max_rank: int) -> dict:
    """Average per-query scores over valid queries and build the CMC curve.

    The CMC is the cumulative histogram of first-hit ranks; a query whose
    ranking is shorter than ``max_rank`` has its first hit inside it, so the
    curve naturally stays at its last value (as if padded) to ``max_rank``.
    The histogram always covers rank 10 so that rank5/rank10 are exact even
    when ``max_rank`` is smaller than 10.
    """
    valid = first_hit >= 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            "distmat/q_pids: no query has a true match left in the gallery after the protocol's "
            "removals, so no metric is defined"
        )
    length = max(max_rank, 10)
    hist = np.bincount(first_hit[valid], minlength=length)[:length]
    cmc = np.cumsum(hist, dtype=np.float64) / num_valid
    return {
        "mAP": float(ap[valid].mean()),
        "mAP_official": float(ap_official[valid].mean()),
        "mINP": float(inp[valid].mean()),
        "cmc": cmc[:max_rank].copy(),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[4]),
        "rank10": float(cmc[9]),
        "num_valid_queries": num_valid,
        "num_queries": int(first_hit.shape[0]),
    }


def _stable_argsort_rows(d: np.ndarray) -> np.ndarray:
    """Row-wise ``np.argsort(d, axis=1, kind="stable")``, several times faster.

    numpy's stable sort is a scalar merge sort while its default sort is
    SIMD-accelerated (~3 s versus ~0.5 s at Market scale).  So sort
    unstably, then restore gallery-index order inside each run of equal
    values: after any correct sort a run is contiguous, so only the tied
    entries need re-sorting, keyed by (run, gallery index).  Float32 distance
    rows do contain ties (~240 tied pairs per row for random 2048-d
    Euclidean features at Market size),
    so this step is not optional.  Rows that are mostly ties (e.g.
    integer-valued distances) go straight to the stable sort.
    """
    order = np.argsort(d, axis=1)
    ranked = np.take_along_axis(d, order, axis=1)
    equal_next = ranked[:, 1:] == ranked[:, :-1]  # entry c ties with entry c+1
    tied = np.zeros(d.shape, dtype=bool)
    tied[:, :-1] = equal_next
    tied[:, 1:] |= equal_next
    rows, cols = np.nonzero(tied)
    if rows.size == 0:
        return order
    if rows.size * 2 > d.size:
        return np.argsort(d, axis=1, kind="stable")
    width = d.shape[1]
    starts_run = tied
    starts_run[:, 1:] &= ~equal_next
    run_id = np.cumsum(starts_run[rows, cols], dtype=np.int64)
    key = run_id * width + order[rows, cols]  # runs are in rank order, so sorting keys sorts within runs
    key.sort()
    order[rows, cols] = key % width
    return order


# --------------------------------------------------------------------------
# Input conversion / validation
# --------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """Bring a tensor (any device) or array-like to numpy without copying numpy input."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def _as_distmat(distmat: Any) -> np.ndarray:
    """Validate the distance matrix: 2-D, non-empty, real, NaN-free."""
    dist = _to_numpy(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D (num_query, num_gallery) matrix, got shape {dist.shape}")
    if dist.shape[0] == 0 or dist.shape[1] == 0:
        raise ValueError(f"distmat: query and gallery must be non-empty, got shape {dist.shape}")
    if dist.dtype.kind not in "iuf":
        raise ValueError(f"distmat: expected real numbers, got dtype {dist.dtype}")
    if dist.dtype == np.float16:
        dist = dist.astype(np.float32)  # exact, and avoids numpy's slow float16 sort
    if dist.dtype.kind == "f" and np.isnan(dist).any():
        raise ValueError(f"distmat: contains {int(np.isnan(dist).sum())} NaN value(s)")
    return dist


def _as_labels(labels: Any, name: str, expected_len: int, what: str) -> np.ndarray:
    """Validate a pid/camid vector: 1-D integers whose length matches ``distmat``."""
    arr = _to_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    if arr.shape[0] != expected_len:
        raise ValueError(f"{name}: length {arr.shape[0]} does not match {what} ({expected_len})")
    return arr.astype(np.int64, copy=False)


# --------------------------------------------------------------------------
# Single-shot protocols
# --------------------------------------------------------------------------

"""Single-gallery-shot protocols of the older benchmarks: ``cuhk03-classic`` and ``cuhk01``.

CUHK03's original protocol (Li et al., DeepReID, CVPR 2014; the one SPReID
reports, on the labeled boxes) and the common CUHK01 setting (485 training /
486 test identities; DSA-reID and SSP-ReID follow it) score a query against a
gallery that holds exactly *one* image of each identity, drawn at random, and
average the CMC over repeated draws.  Choices made here, where the papers leave
the details to their code:

* ``REPEATS = 10`` gallery samplings, drawn from ``numpy.random.default_rng(SEED)``
  with ``SEED = 0``: the same distance matrix always gives the same scores.
  (The papers' 20 random *train/test splits* are a property of the dataset split,
  chosen by the data loader, not of this evaluation.)
* For each query and each gallery identity one image is drawn uniformly among
  that identity's *eligible* images: junk (pid -1) is never eligible and, as in
  the market protocol, an image with the query's pid *and* camera is not
  eligible, so the drawn true match is always a cross-camera one.  Draws are
  independent per query.
* ``cuhk01`` additionally draws one query image per identity in each repeat
  (single-shot on both sides); ``cuhk03-classic`` scores every query image.
* Ties in distance are broken by gallery index, as in the market protocol.
* With one true match in the sampled gallery, AP = INP = 1 / rank of that match;
  the official Market-1501 code's AP (see :func:`evaluate`) is 1 at rank 1 and
  1 / (2 rank) below it (the trapezoid from precision 0 at the item before the
  match). ``mAP``/``mAP_official``/``mINP`` are the mean over valid queries,
  averaged over repeats, and the CMC curve is averaged over repeats.  ``num_valid_queries`` is the number of
  queries with an eligible true match in a repeat (mean over repeats, rounded).
"""
REPEATS = 10  # single-shot protocols: random gallery samplings averaged
SEED = 0


def evaluate_cuhk03_classic(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int) -> dict:
    """Every query against ``REPEATS`` random single-shot galleries."""
    return _single_shot(dist, q_pids, g_pids, q_camids, g_camids, max_rank, sample_queries=False)


def evaluate_cuhk01(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int) -> dict:
    """One random query per identity against a random single-shot gallery, ``REPEATS`` times."""
    return _single_shot(dist, q_pids, g_pids, q_camids, g_camids, max_rank, sample_queries=True)


def _single_shot(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int, *, sample_queries: bool) -> dict:
    rng = np.random.default_rng(SEED)
    # Gallery items sorted by identity, so each identity is one contiguous group.
    group_of = np.unique(g_pids, return_inverse=True)[1]
    order_by_group = np.argsort(group_of, kind="stable")
    group_start = np.searchsorted(group_of[order_by_group], np.arange(group_of.max() + 1))
    pid_of_group = g_pids[order_by_group][group_start]
    repeats = []
    for _ in range(REPEATS):
        queries = _one_per_identity(q_pids, rng) if sample_queries else np.arange(len(q_pids))
        first_hit = np.full(len(queries), -1, dtype=np.int64)
        for start in range(0, len(queries), _QUERY_BLOCK):
            block = queries[start : start + _QUERY_BLOCK]
            first_hit[start : start + len(block)] = _true_match_ranks(
                dist[block],
                q_pids[block],
                q_camids[block],
                g_pids,
                g_camids,
                order_by_group,
                group_start,
                pid_of_group,
                rng,
            )
        rank = np.maximum(first_hit + 1, 1)
        ap = np.where(first_hit >= 0, 1.0 / rank, np.nan)
        official = np.where(first_hit > 0, 0.5 / rank, np.where(first_hit == 0, 1.0, np.nan))
        repeats.append(_summarise(ap, official, ap, first_hit, max_rank))
    result = {
        key: float(np.mean([r[key] for r in repeats]))
        for key in ("mAP", "mAP_official", "mINP", "rank1", "rank5", "rank10")
    }
    result["cmc"] = np.mean([r["cmc"] for r in repeats], axis=0)
    result["num_valid_queries"] = int(round(np.mean([r["num_valid_queries"] for r in repeats])))
    result["num_queries"] = repeats[0]["num_queries"]
    return result


def _one_per_identity(pids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index of one uniformly drawn query per identity (junk queries are never drawn)."""
    priority = rng.random(len(pids))
    order = np.lexsort((priority, pids))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pids[order][1:] != pids[order][:-1]
    picked = order[first]
    return np.sort(picked[pids[picked] != _JUNK_PID])


def _true_match_ranks(
    dist, q_pids, q_cams, g_pids, g_cams, order_by_group, group_start, pid_of_group, rng
) -> np.ndarray:
    """0-based rank of the sampled true match among the sampled gallery, per query (-1: none)."""
    b = dist.shape[0]
    eligible = (g_pids[None, :] != _JUNK_PID) & ~(
        (g_pids[None, :] == q_pids[:, None]) & (g_cams[None, :] == q_cams[:, None])
    )
    priority = np.where(eligible, rng.random(dist.shape), 2.0)[:, order_by_group]
    group_key = np.repeat(np.arange(len(group_start)), np.diff(np.append(group_start, len(order_by_group))))
    best = np.argsort(priority + 4.0 * group_key[None, :], axis=1)[:, group_start]  # first of each group
    rows = np.arange(b)[:, None]
    chosen = order_by_group[best]  # (b, groups) gallery index drawn per identity
    present = priority[rows, best] < 2.0
    d = dist[rows, chosen]
    is_true = (pid_of_group[None, :] == q_pids[:, None]) & present
    has_true = is_true.any(axis=1)
    t = np.argmax(is_true, axis=1)
    d_true = d[np.arange(b), t][:, None]
    idx_true = chosen[np.arange(b), t][:, None]
    before = present & ((d < d_true) | ((d == d_true) & (chosen < idx_true)))
    return np.where(has_true, before.sum(axis=1), -1)
