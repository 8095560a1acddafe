"""Tests for harness.rerank against a dense, loop-by-loop transcription of the paper's algorithm.

``_dense_reference`` follows Zhong et al. (CVPR 2017) step by step on the full
N x N matrix, exactly as the widely used reference code does (full argsort, dense V,
per-query Jaccard loop); the memory-bounded implementation must agree with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.distance import pairwise_distance
from harness.rerank import rerank, rerank_features


def _dense_reference(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    num_q = q_g.shape[0]
    full = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    full = np.power(full, 2).astype(np.float32)
    full = np.transpose(full / np.max(full, axis=0))  # row i = column i / its max
    n = full.shape[0]
    rank = np.argsort(full, axis=1, kind="stable")
    V = np.zeros_like(full)

    def k_recip(i, k):
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    half = int(np.around(k1 / 2.0))
    for i in range(n):
        r = k_recip(i, k1)
        expansion = list(r)
        for c in r:
            rc = k_recip(c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
                expansion.extend(rc)
        expansion = np.unique(expansion)
        w = np.exp(-full[i, expansion])
        V[i, expansion] = w / w.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((num_q, n), dtype=np.float32)
    for i in range(num_q):
        s = np.minimum(V[i][None, :], V).sum(axis=1)
        jaccard[i] = 1 - s / (2 - s)
    final = jaccard * (1 - lambda_value) + full[:num_q] * lambda_value
    return final[:, num_q:]


def _problem(seed: int, num_q: int = 30, num_g: int = 90, dim: int = 16, ids: int = 12):
    """Clustered features (identities + noise) so k-reciprocal sets are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(ids, dim, generator=gen)
    labels = torch.randint(0, ids, (num_q + num_g,), generator=gen)
    feats = centres[labels] + 0.6 * torch.randn(num_q + num_g, dim, generator=gen)
    return feats[:num_q], feats[num_q:]


def _matrices(q, g, metric="euclidean"):
    return (pairwise_distance(q, g, metric=metric), pairwise_distance(q, q, metric=metric), pairwise_distance(g, g, metric=metric))


@pytest.mark.parametrize(("seed", "k1", "k2", "lam"), [(0, 20, 6, 0.3), (1, 6, 3, 0.5), (2, 9, 1, 0.0), (3, 4, 2, 1.0)])
def test_matrix_entry_matches_dense_reference(seed, k1, k2, lam) -> None:
    q_g, q_q, g_g = _matrices(*_problem(seed))
    expected = _dense_reference(q_g, q_q, g_g, k1, k2, lam)
    got = rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    assert got.dtype == np.float32 and got.shape == (30, 90)
    assert np.abs(got - expected).max() <= 1e-4


def test_fewer_images_than_k1_like_the_reference() -> None:
    # 3 + 8 images with k1 = 20: every neighbour list is the whole set, as in the reference's slicing.
    q_g, q_q, g_g = _matrices(*_problem(10, num_q=3, num_g=8))
    assert np.abs(rerank(q_g, q_q, g_g) - _dense_reference(q_g, q_q, g_g)).max() <= 1e-4


def test_changes_the_distances() -> None:
    # lambda < 1 must actually move distances (the Jaccard term is not a no-op).
    q_g, q_q, g_g = _matrices(*_problem(4))
    got = rerank(q_g, q_q, g_g)
    assert np.abs(got - rerank(q_g, q_q, g_g, lambda_value=1.0)).max() > 0.05


@pytest.mark.parametrize("keep", [1, 3])
def test_asymmetric_inputs_use_columns_like_the_reference(keep, monkeypatch) -> None:
    # The reference normalises columns of the stacked matrix and transposes it,
    # so a non-symmetric q_q / g_g is read by columns; so must we be.  keep=1
    # keeps only the k1+1 neighbour distances, so most weights' distances are
    # looked up in the input matrices instead.
    import harness.rerank as rr

    monkeypatch.setattr(rr, "_KEEP", keep)
    rng = np.random.default_rng(5)
    q_g = rng.random((12, 40)).astype(np.float32)
    q_q = rng.random((12, 12)).astype(np.float32)
    g_g = rng.random((40, 40)).astype(np.float32)
    expected = _dense_reference(q_g, q_q, g_g, 8, 3, 0.3)
    assert np.abs(rerank(q_g, q_q, g_g, k1=8, k2=3) - expected).max() <= 1e-4


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("keep", [1, 3])
def test_features_entry_matches_dense_reference(metric, keep, monkeypatch) -> None:
    # Small blocks force several row blocks, pair blocks and Jaccard blocks;
    # keep=1 makes most weights' distances come from recomputed feature blocks.
    import harness.rerank as rr

    monkeypatch.setattr(rr, "_KEEP", keep)
    monkeypatch.setattr(rr, "_ROW_BLOCK", 7)
    monkeypatch.setattr(rr, "_PAIR_BLOCK", 5)
    monkeypatch.setattr(rr, "_JACCARD_PAIRS", 300)
    q, g = _problem(6, num_q=41, num_g=130)
    expected = _dense_reference(*_matrices(q, g, metric))
    got = rerank_features(q, g, metric=metric)
    assert np.abs(got - expected).max() <= 1e-4


def test_features_entry_uses_a_method_distance_hook() -> None:
    q, g = _problem(7)
    calls = []

    def manhattan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append((a.shape[0], b.shape[0]))
        return torch.cdist(a, b, p=1)

    got = rerank_features(q, g, metric=manhattan, k1=10, k2=3)
    expected = _dense_reference(*(torch.cdist(x, y, p=1).numpy() for x, y in ((q, g), (q, q), (g, g))), 10, 3)
    assert calls and np.abs(got - expected).max() <= 1e-4


def test_torch_inputs_are_accepted() -> None:
    mats = _matrices(*_problem(8))
    np.testing.assert_allclose(rerank(*(torch.from_numpy(m) for m in mats)), rerank(*mats), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_dense_reference() -> None:
    q, g = _problem(9, num_q=50, num_g=200)
    expected = _dense_reference(*_matrices(q, g))
    assert np.abs(rerank_features(q.cuda(), g.cuda()) - expected).max() <= 1e-4
    assert np.abs(rerank(*(torch.from_numpy(m).cuda() for m in _matrices(q, g))) - expected).max() <= 1e-4


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"q_q_dist": np.zeros((5, 5), np.float32)}, "q_q_dist"),
        ({"g_g_dist": np.zeros((30, 31), np.float32)}, "g_g_dist"),
        ({"q_g_dist": np.zeros((0, 30), np.float32)}, "q_g_dist"),
        ({"q_g_dist": np.full((4, 30), np.nan, np.float32)}, "q_g_dist.*NaN"),
        ({"q_g_dist": np.zeros((4, 30), np.int64)}, "q_g_dist"),
        ({"k1": 0}, "k1"),
        ({"k2": 50}, "k2"),
        ({"lambda_value": 1.5}, "lambda_value"),
    ],
)
def test_bad_input_names_the_argument(change, name) -> None:
    args = {"q_g_dist": np.ones((4, 30), np.float32), "q_q_dist": np.ones((4, 4), np.float32), "g_g_dist": np.ones((30, 30), np.float32), "k1": 5, "k2": 3}
    args.update(change)
    with pytest.raises(ValueError, match=name):
        rerank(args.pop("q_g_dist"), args.pop("q_q_dist"), args.pop("g_g_dist"), **args)


def test_features_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="gallery"):
        rerank_features(torch.zeros(3, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="metric"):
        rerank_features(torch.zeros(3, 4), torch.zeros(5, 4), metric="hamming")
