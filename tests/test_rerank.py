"""Tests for harness.eval.rerank against a dense, loop-by-loop transcription of the paper's algorithm.

``_dense_reference`` follows Zhong et al. (CVPR 2017) step by step on the full
N x N matrix, exactly as the widely used reference code does (full argsort, dense V,
per-query Jaccard loop); the memory-bounded implementation must agree with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.eval.distance import pairwise_distance
from harness.eval.metrics import evaluate
from harness.eval.rerank import rerank, rerank_features
from harness.eval.score import score
from harness.store import Store
from tests.helpers import run_tiny_grid


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
    return (
        pairwise_distance(q, g, metric=metric),
        pairwise_distance(q, q, metric=metric),
        pairwise_distance(g, g, metric=metric),
    )


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
    import harness.eval.rerank as rr

    monkeypatch.setattr(rr, "_KEEP", keep)
    rng = np.random.default_rng(5)
    q_g = rng.random((12, 40)).astype(np.float32)
    q_q = rng.random((12, 12)).astype(np.float32)
    g_g = rng.random((40, 40)).astype(np.float32)
    expected = _dense_reference(q_g, q_q, g_g, 8, 3, 0.3)
    assert np.abs(rerank(q_g, q_q, g_g, k1=8, k2=3) - expected).max() <= 1e-4


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("keep", [1, 3])
def test_features_entry_matches_dense_reference(metric, keep, monkeypatch) -> None:
    # Small blocks force several row blocks (of both neighbour passes), pair blocks, mask blocks
    # and Jaccard blocks; keep=1 makes most weights' distances come from recomputed feature blocks.
    import harness.eval.neighbours as nb
    import harness.eval.rerank as rr

    monkeypatch.setattr(rr, "_KEEP", keep)
    monkeypatch.setattr(rr, "_KEEP_FLOAT32", keep)
    monkeypatch.setattr(rr, "_ROW_BLOCK", 7)
    monkeypatch.setattr(nb, "_ROW_BLOCK", 7)
    monkeypatch.setattr(nb, "_FIRST_BLOCK", 7)
    monkeypatch.setattr(nb, "_GEMM_ROWS", 3)
    monkeypatch.setattr(rr, "_MASK_CELLS", 171 * 4)  # 4 rows per block of the expansion's mask
    monkeypatch.setattr(rr, "_PAIR_BLOCK", 5)
    monkeypatch.setattr(rr, "_JACCARD_CELLS", 300)  # a few queries per Jaccard block
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
    args = {
        "q_g_dist": np.ones((4, 30), np.float32),
        "q_q_dist": np.ones((4, 4), np.float32),
        "g_g_dist": np.ones((30, 30), np.float32),
        "k1": 5,
        "k2": 3,
    }
    args.update(change)
    with pytest.raises(ValueError, match=name):
        rerank(args.pop("q_g_dist"), args.pop("q_q_dist"), args.pop("g_g_dist"), **args)


def test_features_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="gallery"):
        rerank_features(torch.zeros(3, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="metric"):
        rerank_features(torch.zeros(3, 4), torch.zeros(5, 4), metric="hamming")


def _tied_problem(seed: int = 11):
    """Clustered features with exact duplicates (tied distances) and near-duplicates closer than
    bfloat16 can tell apart (1e-4 relative), so the candidate pass alone would mis-order them."""
    q, g = _problem(seed, num_q=37, num_g=150, dim=64, ids=10)
    g[100:120] = g[:20]  # exact ties
    g[120:140] = g[20:40] * (1 + 1e-4 * torch.randn(20, 64, generator=torch.Generator().manual_seed(seed)))
    q[30:37] = g[50:57]  # queries tied with gallery items
    return q, g


@pytest.mark.parametrize("keep", [1, 3])
def test_bfloat16_pass_is_identical_to_float32_including_ties(keep, monkeypatch) -> None:
    # keep=1 leaves each running list only k1 + 1 long, so many rows cannot be certified from
    # their lists and take the float32 pass of whole rows; small blocks mix float32 query blocks
    # with bfloat16 gallery blocks.
    import harness.eval.neighbours as nb
    import harness.eval.rerank as rr

    monkeypatch.setattr(rr, "_KEEP", keep)
    monkeypatch.setattr(rr, "_KEEP_FLOAT32", keep)
    monkeypatch.setattr(nb, "_ROW_BLOCK", 16)
    monkeypatch.setattr(nb, "_FIRST_BLOCK", 16)
    q, g = _tied_problem()
    exact = rerank_features(q, g, precision="float32")
    low = rerank_features(q, g, precision="bfloat16")
    assert np.array_equal(exact, low)
    expected = _dense_reference(*_matrices(q, g, "euclidean"))
    assert np.abs(low - expected).max() <= 1e-4


def test_bfloat16_candidates_really_differ_and_rows_fall_back(monkeypatch) -> None:
    # The test above means something only if bfloat16 alone orders neighbours differently, and the
    # whole-row fallback is exercised.
    import harness.eval.neighbours as nb

    q, g = _tied_problem()
    feats = torch.cat([q, g])
    approx = torch.cdist(feats.bfloat16().float(), feats.bfloat16().float())
    exact = torch.cdist(feats.double(), feats.double())
    assert not torch.equal(approx.argsort(dim=1, stable=True)[:, :21], exact.argsort(dim=1, stable=True)[:, :21])
    found = []
    original = nb.euclidean_neighbours
    monkeypatch.setattr(
        "harness.eval.rerank.euclidean_neighbours", lambda *a, **k: found.append(original(*a, **k)) or found[-1]
    )
    monkeypatch.setattr(nb, "_ROW_BLOCK", 16)
    monkeypatch.setattr(nb, "_FIRST_BLOCK", 16)
    monkeypatch.setattr("harness.eval.rerank._KEEP", 1)
    rerank_features(q, g, precision="bfloat16")
    assert found[0].fallback_rows > 0


def test_exact_squares_do_not_depend_on_the_batch() -> None:
    # The canonical kernel's value of a pair must not change with the other pairs in the call:
    # that is what makes both precisions agree bit for bit.
    from harness.eval.neighbours import exact_squares

    feats = torch.randn(300, 2048, generator=torch.Generator().manual_seed(3))
    rows, cols = torch.randint(0, 300, (5000,)), torch.randint(0, 300, (5000,))
    together = exact_squares(feats, rows, cols)
    alone = torch.cat([exact_squares(feats, rows[i : i + 1], cols[i : i + 1]) for i in range(0, 5000, 97)])
    assert torch.equal(together[::97], alone)
    assert torch.equal(exact_squares(feats, cols, rows), together)  # symmetric bit for bit


def test_precision_is_checked() -> None:
    q, g = _problem(1)
    with pytest.raises(ValueError, match="precision"):
        rerank_features(q, g, precision="half")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_neighbours_are_ordered_by_distance_then_index(precision) -> None:
    # The tie rule both precisions share: equal canonical distances go to the lower index.
    from harness.eval.neighbours import euclidean_neighbours, exact_squares

    q, g = _tied_problem()
    feats = torch.cat([q, g])
    out = torch.zeros(q.shape[0], g.shape[0])
    found = euclidean_neighbours(feats, q.shape[0], 21, 63, out, precision)
    rows = torch.arange(feats.shape[0])[:, None].expand_as(found.knn)
    dist = exact_squares(feats, rows.reshape(-1), found.knn.reshape(-1)).view(found.knn.shape)
    assert torch.equal(dist, found.near_sq[:, :21])
    tied = dist[:, 1:] == dist[:, :-1]
    assert bool(tied.any())  # the problem has ties
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())
    assert bool((found.knn[:, 1:] > found.knn[:, :-1])[tied].all())
    brute = torch.stack(
        [
            exact_squares(feats, torch.full((feats.shape[0],), i), torch.arange(feats.shape[0]))
            for i in range(feats.shape[0])
        ]
    )
    assert torch.equal(found.row_max, brute.max(dim=1).values)
    order = torch.stack([torch.from_numpy(np.lexsort((np.arange(len(r)), r.numpy()))) for r in brute])
    assert torch.equal(found.knn, order[:, :21])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_result_does_not_depend_on_the_thread_count(metric, monkeypatch) -> None:
    # Independent pieces run on as many Python threads as the caller's torch threads
    # (harness.eval.threads); small blocks give every thread several pieces, in spans of uneven size.
    import harness.eval.neighbours as nb
    import harness.eval.rerank as rr

    monkeypatch.setattr(nb, "_ROW_BLOCK", 16)
    monkeypatch.setattr(nb, "_FIRST_BLOCK", 16)
    monkeypatch.setattr(nb, "_RESCORE_ELEMENTS", 16 * 7)
    monkeypatch.setattr(nb, "_GEMM_ROWS", 5)  # GEMM slabs shared among the threads
    monkeypatch.setattr(rr, "_ROW_BLOCK", 16)
    monkeypatch.setattr(rr, "_MASK_CELLS", 171 * 5)
    monkeypatch.setattr(rr, "_JACCARD_CELLS", 131 * 3)
    q, g = _problem(8, num_q=40, num_g=131)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            results.append(rerank_features(q, g, metric=metric))
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(results[0], results[1])
    expected = _dense_reference(*_matrices(q, g, metric))
    assert np.abs(results[1] - expected).max() <= 1e-4


def test_workers_cover_a_range_in_aligned_spans() -> None:
    from harness.eval.threads import Workers

    with Workers(3) as workers:
        assert workers.spans(10) == [(0, 4), (4, 8), (8, 10)]
        assert workers.spans(100, align=16) == [(0, 48), (48, 96), (96, 100)]
        assert workers.spans(5, align=16) == [(0, 5)]
        assert workers.spans(0) == [(0, 0)]
        assert workers.map(lambda x: x * x, range(7)) == [0, 1, 4, 9, 16, 25, 36]


def test_torch_thread_setting_is_restored() -> None:
    # Re-ranking runs torch's small kernels on one thread (they lose most under shared cores) and
    # must hand the caller's setting back, also when it raises.
    before = torch.get_num_threads()
    q, g = _problem(2)
    rerank_features(q, g)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        rerank_features(q, g, metric=lambda a, b: torch.zeros(1))
    assert torch.get_num_threads() == before


def _scored_by_reference(embeddings, power: int) -> dict:
    """The metrics of the reference re-ranking handed Euclidean distances to the `power`."""
    q, g = torch.from_numpy(embeddings.query), torch.from_numpy(embeddings.gallery)
    d = [pairwise_distance(a, b) ** power for a, b in ((q, g), (q, q), (g, g))]
    labels = (embeddings.query_pids, embeddings.gallery_pids, embeddings.query_camids, embeddings.gallery_camids)
    return evaluate(_dense_reference(*d), *labels, protocol="market")


@pytest.mark.slow
def test_a_cells_reranked_rows_are_the_reference_on_squared_distances(tmp_path) -> None:
    # torchreid hands re_ranking its squared Euclidean distances (the reference squares them again);
    # a cell does the same by default, and says so in its row.
    run, rows, cell_id = run_tiny_grid(tmp_path, "baseline:bnneck")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    store = Store(tmp_path / "store")
    row, embeddings = store.read_row(cell_id, "market1501", True), store.read_embeddings(cell_id, "market1501")
    squared, plain = _scored_by_reference(embeddings, 2), _scored_by_reference(embeddings, 1)
    assert (
        row["rerank_distance"] == "squared-euclidean"
        and store.read_row(cell_id, "market1501", False)["rerank_distance"] is None
    )
    for key in ("mAP", "mAP_official", "mINP", "rank1", "rank5"):
        assert row[key] == pytest.approx(squared[key], abs=1e-6), key
    assert (row["mAP"], row["mAP_official"]) != pytest.approx((plain["mAP"], plain["mAP_official"]), abs=1e-6)
    # rerank_distance = "euclidean" hands the reference the plain distances, as reidbench did before.
    labels = (embeddings.query_pids, embeddings.gallery_pids, embeddings.query_camids, embeddings.gallery_camids)
    metrics, _ = score(
        torch.from_numpy(embeddings.query),
        torch.from_numpy(embeddings.gallery),
        labels,
        protocol="market",
        device=torch.device("cpu"),
        rerank_distance="euclidean",
    )[True]
    assert metrics["rerank_distance"] == "euclidean" and metrics["mAP"] == pytest.approx(plain["mAP"], abs=1e-6)
