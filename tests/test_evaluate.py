"""Tests for harness.eval.metrics.

The small cases are worked out by hand in the comments (ranked list after
the protocol's removals, hits, precision at each hit), so a failure points
at a real disagreement with the Market-1501 protocol rather than at a second
implementation.  ``_reference_market`` is a deliberately naive per-query,
per-item loop used to cross-check the vectorised code on random data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.eval.metrics import _stable_argsort_rows, evaluate, pairwise_distance


def _eval(dist, q_pids, g_pids, q_cams, g_cams, **kwargs) -> dict:
    """evaluate() on plain lists, for the hand-built cases."""
    return evaluate(
        np.asarray(dist, dtype=np.float32),
        np.asarray(q_pids),
        np.asarray(g_pids),
        np.asarray(q_cams),
        np.asarray(g_cams),
        **kwargs,
    )


# --------------------------------------------------------------------------
# Hand-built cases (market protocol)
# --------------------------------------------------------------------------


def test_single_query_known_order() -> None:
    # Query pid 1, cam 0.  Gallery (index: dist, pid, cam), all cam 1 so
    # nothing is removed:
    #   0: 0.30 pid1   1: 0.10 pid2   2: 0.50 pid1   3: 0.20 pid1   4: 0.40 pid3
    # Ranked by distance: idx1(pid2 x) idx3(pid1 v) idx0(pid1 v) idx4(pid3 x) idx2(pid1 v)
    # positions:          1             2             3             4             5
    # hits at 2, 3, 5 -> precisions 1/2, 2/3, 3/5
    # AP   = (1/2 + 2/3 + 3/5) / 3 = (15 + 20 + 18) / 90 = 53/90
    # CMC  = [0, 1, 1, 1, 1] (first hit at position 2)
    # INP  = 3 true matches / last hit position 5 = 3/5
    r = _eval([[0.30, 0.10, 0.50, 0.20, 0.40]], [1], [1, 2, 1, 1, 3], [0], [1, 1, 1, 1, 1], max_rank=5)
    assert r["mAP"] == pytest.approx(53 / 90, abs=1e-12)
    assert r["mINP"] == pytest.approx(3 / 5, abs=1e-12)
    np.testing.assert_array_equal(r["cmc"], [0.0, 1.0, 1.0, 1.0, 1.0])
    assert r["cmc"].dtype == np.float64
    assert r["rank1"] == 0.0
    assert r["rank5"] == 1.0
    assert r["rank10"] == 1.0  # gallery shorter than 10: the curve stays at 1
    assert r["num_valid_queries"] == 1
    assert r["num_queries"] == 1
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10"):
        assert type(r[key]) is float
    assert type(r["num_valid_queries"]) is int and type(r["num_queries"]) is int


# The official Market-1501 code's AP (compute_AP.m), by its own recurrence over the kept ranking:
#   recall = hits / ngood, precision = hits / position,
#   ap += (recall - old_recall) * (old_precision + precision) / 2, starting from old_precision = 1.
# Only hits move the recall, so each hit adds (precision at the hit + precision one item before) / 2 / ngood.


def test_official_ap_integrates_precision_over_recall_by_trapezoids() -> None:
    # The ranking of test_single_query_known_order: x v v x v, hits at positions 2, 3, 5 (ngood 3).
    #   hit at 2: precision 1/2, the item before (position 1) 0/1 = 0  -> (1/2 + 0) / 2   = 1/4
    #   hit at 3: precision 2/3, before (position 2) 1/2                -> (2/3 + 1/2) / 2 = 7/12
    #   hit at 5: precision 3/5, before (position 4) 2/4                -> (3/5 + 1/2) / 2 = 11/20
    # AP = (1/4 + 7/12 + 11/20) / 3 = (15 + 35 + 33) / 60 / 3 = 83/180, against the toolkit's 53/90 = 106/180.
    r = _eval([[0.30, 0.10, 0.50, 0.20, 0.40]], [1], [1, 2, 1, 1, 3], [0], [1, 1, 1, 1, 1], max_rank=5)
    assert r["mAP_official"] == pytest.approx(83 / 180, abs=1e-12) and r["mAP"] == pytest.approx(106 / 180, abs=1e-12)
    assert type(r["mAP_official"]) is float


def test_official_ap_starts_from_precision_one_and_skips_junk() -> None:
    # Hits at positions 1 and 3 (gallery pid 1 at 0.1 and 0.3): the first hit's trapezoid runs from the
    # starting precision 1: (1 + 1) / 2 = 1; the second (2/3 + 1/2) / 2 = 7/12. AP = (1 + 7/12) / 2 = 19/24
    # (toolkit: (1 + 2/3) / 2 = 20/24). A hit at rank 1 alone scores 1 in both.
    r = _eval([[0.1, 0.2, 0.3], [0.2, 0.3, 0.1]], [1, 3], [1, 2, 1], [0, 0], [1, 1, 1], max_rank=3)
    # q1 (pid 3) has no match and is skipped
    assert r["mAP_official"] == pytest.approx(19 / 24, abs=1e-12) and r["mAP"] == pytest.approx(20 / 24, abs=1e-12)
    # The junk case of test_junk_removed_distractor_counts_as_wrong: kept ranking x v v (junk does not
    # advance compute_AP.m's position j). Hit at 2: (1/2 + 0) / 2 = 1/4; hit at 3: (2/3 + 1/2) / 2 = 7/12.
    # AP = (1/4 + 7/12) / 2 = 5/12 (toolkit 7/12).
    r = _eval([[0.1, 0.2, 0.3, 0.4, 0.5]], [5], [-1, 0, 5, -1, 5], [0], [1, 1, 1, 1, 2], max_rank=4)
    assert r["mAP_official"] == pytest.approx(5 / 12, abs=1e-12) and r["mAP"] == pytest.approx(7 / 12, abs=1e-12)


def test_same_pid_same_camera_is_removed() -> None:
    # Query pid 1, cam 0.  Gallery (dist, pid, cam):
    #   0: 0.1 pid1 cam0  <- same pid AND same camera: removed entirely
    #   1: 0.2 pid3 cam0  <- same camera but other pid: stays, a wrong match
    #   2: 0.3 pid1 cam1  <- the only countable true match
    #   3: 0.4 pid2 cam1
    # Ranked after removal: idx1(x) idx2(v) idx3(x); hit at position 2.
    # AP = (1/2) / 1 = 0.5; rank1 = 0; CMC = [0, 1, 1]; INP = 1/2.
    # (If idx0 counted: hits at 1 and 3 -> AP = (1 + 2/3)/2 = 5/6 and rank1 = 1.)
    r = _eval([[0.1, 0.2, 0.3, 0.4]], [1], [1, 3, 1, 2], [0], [0, 0, 1, 1], max_rank=3)
    assert r["mAP"] == pytest.approx(0.5, abs=1e-12)
    assert r["mINP"] == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_array_equal(r["cmc"], [0.0, 1.0, 1.0])
    assert r["rank1"] == 0.0


def test_junk_removed_distractor_counts_as_wrong() -> None:
    # Query pid 5, cam 0.  Gallery (dist, pid, cam):
    #   0: 0.1 pid-1 (junk, removed)   1: 0.2 pid0 (distractor, stays)
    #   2: 0.3 pid5 cam1               3: 0.4 pid-1 (junk, removed)
    #   4: 0.5 pid5 cam2
    # Ranked after removal: idx1(x) idx2(v) idx4(v) -> hits at positions 2, 3.
    # AP = (1/2 + 2/3) / 2 = 7/12; INP = 2/3; rank1 = 0, rank2 = 1.
    # (Junk kept would give hits at 3, 5: AP = (1/3 + 2/5)/2; distractor
    #  dropped would give AP = 1.)
    r = _eval([[0.1, 0.2, 0.3, 0.4, 0.5]], [5], [-1, 0, 5, -1, 5], [0], [1, 1, 1, 1, 2], max_rank=4)
    assert r["mAP"] == pytest.approx(7 / 12, abs=1e-12)
    assert r["mINP"] == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_array_equal(r["cmc"], [0.0, 1.0, 1.0, 1.0])


def test_query_without_valid_match_is_skipped() -> None:
    # Gallery: 0: pid1 cam1   1: pid2 cam0   2: pid3 cam1
    # q0: pid1 cam0, dists [0.2, 0.1, 0.3] -> ranked idx1(x) idx0(v) idx2(x): AP 1/2, first hit rank 2
    # q1: pid2 cam0 -> its only match (idx1) is same-camera, removed -> skipped
    # q2: pid9 cam0 -> no gallery item with pid 9 -> skipped
    # q3: pid3 cam0, dists [0.3, 0.2, 0.1] -> ranked idx2(v) idx1(x) idx0(x): AP 1, first hit rank 1
    # Valid: q0, q3.  mAP = (1/2 + 1)/2 = 3/4; CMC = [1/2, 1, 1]; INP: q0 1/2, q3 1 -> 3/4.
    dist = [[0.2, 0.1, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]
    r = _eval(dist, [1, 2, 9, 3], [1, 2, 3], [0, 0, 0, 0], [1, 0, 1], max_rank=3)
    assert r["num_queries"] == 4
    assert r["num_valid_queries"] == 2
    assert r["mAP"] == pytest.approx(3 / 4, abs=1e-12)
    assert r["mINP"] == pytest.approx(3 / 4, abs=1e-12)
    np.testing.assert_array_equal(r["cmc"], [0.5, 1.0, 1.0])


def test_all_queries_invalid_raises() -> None:
    # q0 pid2 cam0: its only match is same-camera; q1 pid7: no match at all.
    with pytest.raises(ValueError, match="no query"):
        _eval([[0.1, 0.2], [0.1, 0.2]], [2, 7], [2, 3], [0, 0], [0, 1])


@pytest.mark.parametrize(
    ("g_pids", "expected_ap", "expected_rank1", "expected_inp"),
    [
        # dists [0.5, 0.2, 0.2, 0.9]; idx1 and idx2 tie at 0.2 -> idx1 first.
        # pids [3, 1, 4, 1]: ranked idx1(v) idx2(x) idx0(x) idx3(v):
        #   hits at 1, 4 -> AP = (1 + 2/4)/2 = 3/4, rank1 = 1, INP = 2/4
        ([3, 1, 4, 1], 0.75, 1.0, 0.5),
        # pids [3, 4, 1, 1]: ranked idx1(x) idx2(v) idx0(x) idx3(v):
        #   hits at 2, 4 -> AP = (1/2 + 2/4)/2 = 1/2, rank1 = 0, INP = 2/4
        ([3, 4, 1, 1], 0.5, 0.0, 0.5),
    ],
)
def test_ties_broken_by_gallery_index(g_pids, expected_ap, expected_rank1, expected_inp) -> None:
    r = _eval([[0.5, 0.2, 0.2, 0.9]], [1], g_pids, [0], [1, 1, 1, 1])
    assert r["mAP"] == pytest.approx(expected_ap, abs=1e-12)
    assert r["rank1"] == expected_rank1
    assert r["mINP"] == pytest.approx(expected_inp, abs=1e-12)


def test_max_rank_longer_than_gallery() -> None:
    # Same data as test_single_query_known_order: first hit at position 2 of
    # a 5-item ranking; with max_rank=50 the curve stays at 1 up to rank 50.
    r = _eval([[0.30, 0.10, 0.50, 0.20, 0.40]], [1], [1, 2, 1, 1, 3], [0], [1, 1, 1, 1, 1], max_rank=50)
    assert r["cmc"].shape == (50,)
    np.testing.assert_array_equal(r["cmc"], [0.0] + [1.0] * 49)
    assert (r["rank1"], r["rank5"], r["rank10"]) == (0.0, 1.0, 1.0)


def test_rank10_exact_when_max_rank_is_small() -> None:
    # Query pid 1: seven wrong items (pid 2) then the match at position 8.
    # With max_rank=3 the returned curve is [0, 0, 0], but rank10 is still
    # defined by the full ranking: rank1 = rank5 = 0, rank10 = 1.  AP = 1/8.
    dist = [np.arange(8, dtype=np.float32)]
    r = _eval(dist, [1], [2] * 7 + [1], [0], [1] * 8, max_rank=3)
    np.testing.assert_array_equal(r["cmc"], [0.0, 0.0, 0.0])
    assert (r["rank1"], r["rank5"], r["rank10"]) == (0.0, 0.0, 1.0)
    assert r["mAP"] == pytest.approx(1 / 8, abs=1e-12)
    assert r["mINP"] == pytest.approx(1 / 8, abs=1e-12)


# --------------------------------------------------------------------------
# Random data against a naive reference
# --------------------------------------------------------------------------


def _reference_market(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Straightforward per-query loop over the Market-1501 protocol."""
    aps, inps, cmcs = [], [], []
    for i in range(dist.shape[0]):
        ranked_hits = []
        for j in np.argsort(dist[i], kind="stable"):
            if g_pids[j] == -1:
                continue
            if g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]:
                continue
            ranked_hits.append(bool(g_pids[j] == q_pids[i]))
        if not any(ranked_hits):
            continue
        hits, precisions, last = 0, [], 0
        for position, is_hit in enumerate(ranked_hits, start=1):
            if is_hit:
                hits += 1
                precisions.append(hits / position)
                last = position
        first = ranked_hits.index(True)
        cmcs.append([1.0 if r >= first else 0.0 for r in range(max_rank)])
        aps.append(sum(precisions) / hits)
        inps.append(hits / last)
    return float(np.mean(aps)), float(np.mean(inps)), np.mean(cmcs, axis=0), len(aps)


def _reference_official(dist, q_pids, g_pids, q_cams, g_cams) -> float:
    """compute_AP.m transcribed loop by loop (good: same pid, other camera; junk: pid -1 or same pid
    and camera), averaged over the queries that have a good image."""
    aps = []
    for i in range(dist.shape[0]):
        good = {j for j in range(len(g_pids)) if g_pids[j] == q_pids[i] and g_cams[j] != q_cams[i]}
        junk = {j for j in range(len(g_pids)) if g_pids[j] == -1 or (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])}
        if not good:
            continue
        old_recall, old_precision, ap, intersect, position = 0.0, 1.0, 0.0, 0, 0
        for j in np.argsort(dist[i], kind="stable"):
            if j in junk:
                continue
            intersect += j in good
            recall, precision = intersect / len(good), intersect / (position + 1)
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision, position = recall, precision, position + 1
            if intersect == len(good):
                break
        aps.append(ap)
    return float(np.mean(aps))


def _random_problem(seed: int, num_q: int = 30, num_g: int = 200):
    rng = np.random.default_rng(seed)
    dist = rng.random((num_q, num_g)).astype(np.float32)
    q_pids = rng.integers(1, 12, num_q)
    g_pids = rng.integers(-1, 12, num_g)  # includes junk (-1) and distractors (0)
    q_cams = rng.integers(0, 6, num_q)
    g_cams = rng.integers(0, 6, num_g)
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", [0, 1, 2])
# Rounding forces ties: 1000 levels gives a few tied pairs per row (the
# fast tie-fixing path), 10 and 2 levels make most of a row tied.
@pytest.mark.parametrize("quantise", [None, 1000, 10, 2])
def test_random_against_reference_loop(seed: int, quantise: int | None) -> None:
    dist, q_pids, g_pids, q_cams, g_cams = _random_problem(seed)
    if quantise is not None:
        dist = np.round(dist * quantise).astype(np.float32)
    max_rank = 20
    ref_map, ref_minp, ref_cmc, ref_valid = _reference_market(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    r = evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    assert r["num_valid_queries"] == ref_valid
    assert r["num_queries"] == 30
    assert r["mAP"] == pytest.approx(ref_map, rel=1e-12)
    assert r["mAP_official"] == pytest.approx(_reference_official(dist, q_pids, g_pids, q_cams, g_cams), rel=1e-12)
    assert r["mAP_official"] < r["mAP"]
    assert r["mINP"] == pytest.approx(ref_minp, rel=1e-12)
    np.testing.assert_allclose(r["cmc"], ref_cmc, rtol=0, atol=1e-12)
    assert (r["rank1"], r["rank5"], r["rank10"]) == pytest.approx((ref_cmc[0], ref_cmc[4], ref_cmc[9]))


def test_many_query_blocks_against_reference_loop() -> None:
    # More queries than one internal block (256), to exercise block stitching.
    dist, q_pids, g_pids, q_cams, g_cams = _random_problem(7, num_q=600, num_g=80)
    ref_map, ref_minp, ref_cmc, ref_valid = _reference_market(dist, q_pids, g_pids, q_cams, g_cams, 50)
    r = evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    assert r["num_valid_queries"] == ref_valid
    assert r["mAP"] == pytest.approx(ref_map, rel=1e-12)
    assert r["mINP"] == pytest.approx(ref_minp, rel=1e-12)
    np.testing.assert_allclose(r["cmc"], ref_cmc, rtol=0, atol=1e-12)


def test_torch_inputs_match_numpy() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = _random_problem(3)
    expected = evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    got = evaluate(
        torch.from_numpy(dist).requires_grad_(),
        torch.from_numpy(q_pids),
        torch.from_numpy(g_pids),
        torch.from_numpy(q_cams).int(),
        torch.from_numpy(g_cams).int(),
    )
    assert got["mAP"] == expected["mAP"]
    np.testing.assert_array_equal(got["cmc"], expected["cmc"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_match_numpy() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = _random_problem(4)
    expected = evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    got = evaluate(*(torch.from_numpy(x).cuda() for x in (dist, q_pids, g_pids, q_cams, g_cams)))
    assert got["mAP"] == expected["mAP"]
    np.testing.assert_array_equal(got["cmc"], expected["cmc"])


@pytest.mark.parametrize("levels", [2, 50, 10_000, None])
def test_stable_argsort_rows_matches_numpy_stable(levels: int | None) -> None:
    # The fast tie-fixing sort must equal a true stable sort at every tie
    # density, from "almost all tied" to "no ties".
    rng = np.random.default_rng(levels or 0)
    d = rng.random((40, 3000))
    if levels is not None:
        d = np.floor(d * levels).astype(np.float32)
    np.testing.assert_array_equal(_stable_argsort_rows(d.copy()), np.argsort(d, axis=1, kind="stable"))


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def _good_args():
    return _random_problem(5, num_q=4, num_g=6)


@pytest.mark.parametrize(
    ("position", "replacement", "name"),
    [
        (0, np.zeros((4,), dtype=np.float32), "distmat"),  # not 2-D
        (0, np.zeros((0, 6), dtype=np.float32), "distmat"),  # empty query set
        (0, np.zeros((4, 0), dtype=np.float32), "distmat"),  # empty gallery
        (0, np.array([["a"] * 6] * 4), "distmat"),  # not numeric
        (1, np.arange(5), "q_pids"),  # length != distmat rows
        (2, np.arange(7), "g_pids"),  # length != distmat columns
        (3, np.arange(3), "q_camids"),
        (4, np.arange(5), "g_camids"),
        (1, np.ones(4) * 1.5, "q_pids"),  # non-integer
        (2, np.ones(6), "g_pids"),  # float dtype, even if integral
        (3, np.array(["c1"] * 4), "q_camids"),
        (4, torch.ones(6), "g_camids"),
        (1, np.ones((4, 1), dtype=np.int64), "q_pids"),  # not 1-D
    ],
)
def test_bad_inputs_name_the_argument(position: int, replacement, name: str) -> None:
    args = list(_good_args())
    args[position] = replacement
    with pytest.raises(ValueError, match=name):
        evaluate(*args)


def test_nan_distance_rejected() -> None:
    dist, *labels = _good_args()
    dist[1, 2] = np.nan
    with pytest.raises(ValueError, match="distmat.*NaN"):
        evaluate(dist, *labels)


def test_unknown_protocol_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="market"):
        evaluate(*_good_args(), protocol="viper")


@pytest.mark.parametrize("max_rank", [0, -3, 2.5])
def test_bad_max_rank(max_rank) -> None:
    with pytest.raises(ValueError, match="max_rank"):
        evaluate(*_good_args(), max_rank=max_rank)


# --------------------------------------------------------------------------
# pairwise_distance
# --------------------------------------------------------------------------


def _features(seed: int = 0, num_q: int = 30, num_g: int = 50, dim: int = 64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_q, dim, generator=gen), torch.randn(num_g, dim, generator=gen)


def test_euclidean_matches_cdist() -> None:
    q, g = _features()
    d = pairwise_distance(q, g)
    assert isinstance(d, np.ndarray) and d.dtype == np.float32 and d.shape == (30, 50)
    expected = torch.cdist(q.double(), g.double()).numpy()
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-5)


def test_cosine_matches_direct_formula() -> None:
    q, g = _features(1)
    d = pairwise_distance(q, g, metric="cosine")
    qd, gd = q.double(), g.double()
    expected = 1 - (qd @ gd.T) / (qd.norm(dim=1)[:, None] * gd.norm(dim=1)[None, :])
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_small_chunks_give_same_result(metric: str) -> None:
    q, g = _features(2)
    whole = pairwise_distance(q, g, metric=metric)
    chunked = pairwise_distance(q, g, metric=metric, chunk_size=7)  # 30 rows -> 5 chunks, last partial
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)


def test_euclidean_self_distance_is_zero_not_nan() -> None:
    # |q|^2 + |g|^2 - 2q.g can round below zero for identical vectors.
    q, _ = _features(3)
    d = pairwise_distance(q, q.clone())
    assert not np.isnan(d).any()
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-2)


def test_non_float32_input_is_computed_in_float32() -> None:
    q, g = _features(4)
    d = pairwise_distance(q.double(), g.half())
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, pairwise_distance(q, g.half().float()), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cuda_matches_cpu(metric: str) -> None:
    q, g = _features(5)
    d = pairwise_distance(q.cuda(), g.cuda(), metric=metric, chunk_size=8)
    assert isinstance(d, np.ndarray) and d.dtype == np.float32
    np.testing.assert_allclose(d, pairwise_distance(q, g, metric=metric), rtol=1e-4, atol=1e-4)


def test_unknown_metric_lists_valid_ones() -> None:
    q, g = _features()
    with pytest.raises(ValueError, match="euclidean.*cosine"):
        pairwise_distance(q, g, metric="manhattan")


@pytest.mark.parametrize(
    ("query", "gallery", "kwargs", "name"),
    [
        (torch.zeros(3), torch.zeros(4, 8), {}, "query"),
        (torch.zeros(3, 8), torch.zeros(4, 7), {}, "feature dimensions"),
        (torch.zeros(3, 8, dtype=torch.int64), torch.zeros(4, 8), {}, "query"),
        (np.zeros((3, 8)), torch.zeros(4, 8), {}, "query"),
        (torch.zeros(3, 8), torch.zeros(4, 8), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_pairwise_bad_inputs(query, gallery, kwargs, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        pairwise_distance(query, gallery, **kwargs)


def test_method_distance_hook_is_used_blockwise() -> None:
    # A method's own batched distance (here Manhattan) replaces the built-in metric;
    # it is called once per query block with the whole gallery.
    q, g = _features(6)
    calls = []

    def manhattan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append((a.shape[0], b.shape[0]))
        return torch.cdist(a, b, p=1)

    d = pairwise_distance(q, g, metric=manhattan, chunk_size=8)
    assert d.dtype == np.float32 and calls == [(8, 50), (8, 50), (8, 50), (6, 50)]
    np.testing.assert_allclose(d, torch.cdist(q, g, p=1).numpy(), rtol=1e-6)


def test_method_distance_hook_may_take_non_vector_features() -> None:
    # e.g. spatial feature maps (N, C, H, W) compared by the method's own matching.
    q, g = torch.randn(3, 4, 2, 2), torch.randn(5, 4, 2, 2)
    d = pairwise_distance(q, g, metric=lambda a, b: torch.cdist(a.flatten(1), b.flatten(1)))
    np.testing.assert_allclose(d, torch.cdist(q.flatten(1), g.flatten(1)).numpy(), rtol=1e-5)


def test_method_distance_hook_with_wrong_shape_is_named() -> None:
    q, g = _features(7)
    with pytest.raises(ValueError, match="metric.*shape"):
        pairwise_distance(q, g, metric=lambda a, b: a @ a.T)


@pytest.mark.parametrize(
    ("query", "gallery", "name"),
    [(torch.zeros(0, 8), torch.zeros(4, 8), "query"), (torch.zeros(3, 8), torch.zeros(0, 8), "gallery")],
)
def test_pairwise_empty_inputs_are_named(query, gallery, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}.*empty"):
        pairwise_distance(query, gallery)
