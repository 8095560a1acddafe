"""Hand-worked cases for the occluded, cuhk03-classic and cuhk01 protocols.

Each case lists the gallery as (index: distance, pid, camera) and works out the
ranking and the scores in the comments.  Sampling protocols are checked where the
draw cannot matter (one eligible image per identity), and, for the draw itself,
against the probabilities worked out by hand with many repeats.
"""

from __future__ import annotations

import numpy as np
import pytest

import harness.eval.metrics as single_shot
from harness.eval.metrics import evaluate


def _eval(dist, q_pids, g_pids, q_cams, g_cams, protocol, **kwargs) -> dict:
    arrays = [np.asarray(dist, dtype=np.float32)] + [np.asarray(x) for x in (q_pids, g_pids, q_cams, g_cams)]
    return evaluate(*arrays, protocol=protocol, **kwargs)


# --------------------------------------------------------------------------
# occluded
# --------------------------------------------------------------------------


def test_occluded_leaves_out_the_whole_body_image_with_the_querys_index_and_drops_junk() -> None:
    # camids are image indices within a person (FastReID's OccludedREID loader). Query pid 1, index 2:
    #   0: 0.1 pid1 index 2  <- the same index: left out, as FastReID's evaluate_rank leaves it out
    #   1: 0.2 pid-1         <- junk: removed
    #   2: 0.3 pid2 index 1
    #   3: 0.4 pid1 index 1
    #   4: 0.5 pid1 index 3
    # ranking: idx2(x) idx3(v) idx4(v): hits at 2 and 3, AP = (1/2 + 2/3) / 2 = 7/12, INP = 2/3, rank1 = 0
    args = ([[0.1, 0.2, 0.3, 0.4, 0.5]], [1], [1, -1, 2, 1, 1], [2], [2, 1, 1, 1, 3])
    occ = _eval(*args, "occluded", max_rank=3)
    assert occ["mAP"] == pytest.approx(7 / 12, abs=1e-12)
    assert occ["mINP"] == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_array_equal(occ["cmc"], [0.0, 1.0, 1.0])


def test_occluded_skips_queries_without_match() -> None:
    # Query 0 (pid 1, index 1): gallery idx1 pid1 index 2 at 0.2 behind idx0 pid3 at 0.1 -> AP 1/2.
    # Query 1 (pid 9): no pid-9 image in the gallery -> skipped.
    r = _eval([[0.1, 0.2], [0.3, 0.4]], [1, 9], [3, 1], [1, 1], [1, 2], "occluded", max_rank=2)
    assert r["num_valid_queries"] == 1 and r["num_queries"] == 2
    assert r["mAP"] == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_array_equal(r["cmc"], [0.0, 1.0])


# --------------------------------------------------------------------------
# cuhk03-classic
# --------------------------------------------------------------------------


def test_cuhk03_classic_one_image_per_identity_is_exact() -> None:
    # Query pid 1, cam 0.  Gallery:
    #   0: 0.05 pid1 cam0  <- same pid and camera: never eligible
    #   1: 0.10 pid2 cam1
    #   2: 0.20 pid1 cam1  <- the only eligible true match
    #   3: 0.30 pid3 cam1
    #   4: 0.50 pid-1      <- junk: never eligible
    # Every draw gives the gallery {idx1, idx2, idx3}: the true match is 2nd.
    # AP = INP = 1/2, CMC = [0, 1, 1], whatever the seed.
    r = _eval([[0.05, 0.1, 0.2, 0.3, 0.5]], [1], [1, 2, 1, 3, -1], [0], [0, 1, 1, 1, 0], "cuhk03-classic", max_rank=3)
    assert r["mAP"] == pytest.approx(0.5, abs=1e-12) and r["mINP"] == pytest.approx(0.5, abs=1e-12)
    # compute_AP.m with one good image at rank 2: precision 1/2, the item before it 0/1 -> (1/2 + 0)/2 = 1/4
    assert r["mAP_official"] == pytest.approx(0.25, abs=1e-12)
    # ... and at rank 1 it starts from precision 1: (1 + 1)/2 = 1
    first = _eval(
        [[0.05, 0.3, 0.2, 0.3, 0.5]], [1], [1, 2, 1, 3, -1], [0], [0, 1, 1, 1, 0], "cuhk03-classic", max_rank=3
    )
    assert first["mAP_official"] == first["mAP"] == 1.0
    np.testing.assert_allclose(r["cmc"], [0.0, 1.0, 1.0])
    assert r["rank1"] == 0.0 and r["rank5"] == 1.0 and r["num_valid_queries"] == 1


def test_cuhk03_classic_single_shot_differs_from_multi_shot() -> None:
    # Query pid 1 (cam 0); gallery: 0: 0.1 pid1, 1: 0.3 pid1, 2: 0.2 pid2 (all cam 1).
    # market: hits at ranks 1 and 3 -> AP = (1 + 2/3)/2 = 5/6, rank1 = 1.
    # single shot: pid1 draws idx0 (rank 1, AP 1) or idx1 (behind pid2's 0.2: rank 2, AP 1/2),
    # each with probability 1/2 -> expected rank1 = 1/2 and mAP = 3/4.
    args = ([[0.1, 0.3, 0.2]], [1], [1, 1, 2], [0], [1, 1, 1])
    assert _eval(*args, "market")["mAP"] == pytest.approx(5 / 6)
    r = _eval(*args, "cuhk03-classic")
    # With the default 10 draws each score is a multiple of 1/10 (rank1) or 1/20 (AP).
    assert r["rank1"] * 10 == pytest.approx(round(r["rank1"] * 10))
    assert r["mAP"] == pytest.approx(0.5 + r["rank1"] / 2)  # AP is 1 when rank1 hits, else 1/2
    assert _same(r, _eval(*args, "cuhk03-classic"))  # seeded: the same draws every time


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_cuhk03_classic_draw_probabilities(monkeypatch) -> None:
    # As above, with many draws the averages approach the hand-worked expectations.
    monkeypatch.setattr(single_shot, "REPEATS", 4000)
    r = _eval([[0.1, 0.3, 0.2]], [1], [1, 1, 2], [0], [1, 1, 1], "cuhk03-classic")
    assert r["rank1"] == pytest.approx(0.5, abs=0.03)
    assert r["mAP"] == pytest.approx(0.75, abs=0.015)


def test_cuhk03_classic_is_deterministic_and_seeded(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    dist = rng.random((20, 60)).astype(np.float32)
    labels = (rng.integers(0, 10, 20), rng.integers(0, 10, 60), rng.integers(0, 2, 20), rng.integers(0, 2, 60))
    first, again = (
        evaluate(dist, *labels, protocol="cuhk03-classic"),
        evaluate(dist, *labels, protocol="cuhk03-classic"),
    )
    assert _same(first, again)
    monkeypatch.setattr(single_shot, "SEED", 1)
    assert not _same(first, evaluate(dist, *labels, protocol="cuhk03-classic"))


def test_single_shot_ties_break_by_gallery_index() -> None:
    # Query pid 1; gallery 0: 0.2 pid2, 1: 0.2 pid1, 2: 0.2 pid3 (all tied, one image each).
    # Stable order by gallery index: idx0(x) idx1(v) idx2(x) -> true match 2nd, AP 1/2.
    r = _eval([[0.2, 0.2, 0.2]], [1], [2, 1, 3], [0], [1, 1, 1], "cuhk03-classic", max_rank=3)
    assert r["mAP"] == pytest.approx(0.5) and r["rank1"] == 0.0


# --------------------------------------------------------------------------
# cuhk01
# --------------------------------------------------------------------------


def test_cuhk01_draws_one_query_per_identity(monkeypatch) -> None:
    # Queries: q0 pid1 (true match idx0 at 0.1: rank 1), q1 pid1 (true match at 0.9,
    # behind pid2's 0.5: rank 2), q2 pid2 (its match idx1 at 0.1: rank 1).
    # Gallery (one image per identity, cam 1): 0: pid1, 1: pid2.
    #   q0: [0.1, 0.5]   q1: [0.9, 0.5]   q2: [0.4, 0.1]
    # Each repeat scores 2 queries: one of {q0, q1} (prob. 1/2 each) and q2.
    # Expected rank1 = (1/2 * 1 + 1/2 * 0 + 1) / 2 = 3/4; mAP = (1/2 + 1/2 * 1/2 + 1) / 2 = 7/8.
    args = ([[0.1, 0.5], [0.9, 0.5], [0.4, 0.1]], [1, 1, 2], [1, 2], [0, 0, 0], [1, 1])
    r = _eval(*args, "cuhk01")
    assert r["num_valid_queries"] == 2 and r["num_queries"] == 2
    # cuhk03-classic scores all three queries: rank1 = 2/3, mAP = (1 + 1/2 + 1)/3 = 5/6.
    c = _eval(*args, "cuhk03-classic")
    assert c["rank1"] == pytest.approx(2 / 3) and c["mAP"] == pytest.approx(5 / 6)
    monkeypatch.setattr(single_shot, "REPEATS", 4000)
    r = _eval(*args, "cuhk01")
    assert r["rank1"] == pytest.approx(0.75, abs=0.02)
    assert r["mAP"] == pytest.approx(7 / 8, abs=0.01)


def test_cuhk01_exact_when_nothing_to_draw() -> None:
    # One query per identity and one gallery image per identity: a plain single-shot CMC.
    # q0 pid1: [0.1 pid1, 0.2 pid2, 0.3 pid3] -> rank 1
    # q1 pid2: [0.1 pid1, 0.3 pid2, 0.2 pid3] -> rank 3 (AP 1/3)
    # q2 pid3: [0.3 pid1, 0.1 pid2, 0.2 pid3] -> rank 2 (AP 1/2)
    # CMC = [1/3, 2/3, 1]; mAP = (1 + 1/3 + 1/2) / 3 = 11/18
    dist = [[0.1, 0.2, 0.3], [0.1, 0.3, 0.2], [0.3, 0.1, 0.2]]
    r = _eval(dist, [1, 2, 3], [1, 2, 3], [0, 0, 0], [1, 1, 1], "cuhk01", max_rank=3)
    np.testing.assert_allclose(r["cmc"], [1 / 3, 2 / 3, 1.0])
    assert r["mAP"] == pytest.approx(11 / 18) and r["mINP"] == pytest.approx(11 / 18)


def test_unknown_protocol_lists_all_four() -> None:
    with pytest.raises(ValueError, match="cuhk01.*cuhk03-classic.*market.*occluded"):
        _eval([[0.1]], [1], [1], [0], [1], "viper")
