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
  ``mAP``/``mINP`` are the mean over valid queries, averaged over repeats, and the
  CMC curve is averaged over repeats.  ``num_valid_queries`` is the number of
  queries with an eligible true match in a repeat (mean over repeats, rounded).
"""

from __future__ import annotations

import numpy as np

REPEATS = 10
SEED = 0
_JUNK_PID = -1
_QUERY_BLOCK = 256


def evaluate_cuhk03_classic(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int) -> dict:
    """Every query against ``REPEATS`` random single-shot galleries."""
    return _single_shot(dist, q_pids, g_pids, q_camids, g_camids, max_rank, sample_queries=False)


def evaluate_cuhk01(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int) -> dict:
    """One random query per identity against a random single-shot gallery, ``REPEATS`` times."""
    return _single_shot(dist, q_pids, g_pids, q_camids, g_camids, max_rank, sample_queries=True)


def _single_shot(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int, *, sample_queries: bool) -> dict:
    from harness.evaluate import _summarise

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
                dist[block], q_pids[block], q_camids[block], g_pids, g_camids,
                order_by_group, group_start, pid_of_group, rng,
            )
        ap = np.where(first_hit >= 0, 1.0 / np.maximum(first_hit + 1, 1), np.nan)
        repeats.append(_summarise(ap, ap, first_hit, max_rank))
    result = {key: float(np.mean([r[key] for r in repeats])) for key in ("mAP", "mINP", "rank1", "rank5", "rank10")}
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


def _true_match_ranks(dist, q_pids, q_cams, g_pids, g_cams, order_by_group, group_start, pid_of_group, rng) -> np.ndarray:
    """0-based rank of the sampled true match among the sampled gallery, per query (-1: none)."""
    b = dist.shape[0]
    eligible = (g_pids[None, :] != _JUNK_PID) & ~((g_pids[None, :] == q_pids[:, None]) & (g_cams[None, :] == q_cams[:, None]))
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
