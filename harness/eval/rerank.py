"""k-reciprocal re-ranking (Zhong et al., "Re-ranking person re-identification with
k-reciprocal encoding", CVPR 2017), exact but memory-bounded.

The widely used reference code builds the dense ``(N, N)`` distance matrix of all
``N = Nq + Ng`` images, argsorts every row, fills a dense ``V`` and loops over
queries for the Jaccard distance: about 9 GB at Market-1501 size and ~200 GB at
MSMT17 size.  The same quantities are computed here with bounded memory:

* one pass over row blocks of the distance matrix keeps only each row's maximum
  and its nearest neighbours (running lists: a pair enters a list only if it beats
  the list's current last entry; no argsort of N x N);
* k-reciprocal sets, their expansion and the Gaussian-kernel weights are built
  from those lists, so ``V`` is a sparse matrix with ``O(N k1)`` entries;
* local query expansion averages sparse rows; the Jaccard distance is accumulated
  query block by query block through an inverted (column) index of ``V``.

Beside the ``(Nq, Ng)`` float32 result the working set is one row block of the
distance matrix plus the sparse ``V`` (tens of MB at MSMT17 size).  Everything runs
on the device of the inputs (GPU or CPU).

Semantics follow the reference formulation exactly: distances are squared and each
row is divided by its maximum over all ``N`` images (the reference's column
maximum of the stacked matrix, transposed), the expansion test is
``|R(c, k1/2) ∩ R(i, k1)| > 2/3 |R(c, k1/2)|`` with ``k1/2`` rounded like
``numpy.around``, query expansion is skipped when ``k2 == 1``, and the result is
``(1 - lambda) * jaccard + lambda * normalised squared distance``.  Neighbours tied
at exactly equal distance may be ordered differently from the reference (whose
own order depends on numpy's sort implementation).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from harness.eval.distance import Metric, as_features, check_metric, distance_block, gallery_norm
from harness.eval.neighbours import euclidean_neighbours, exact_squares, fold_block, resolve_precision
from harness.eval.threads import INLINE, Workers

# Rows of the distance matrix per block in the neighbour pass; memory is block x N float32.
_ROW_BLOCK = 512
# Nearest items kept per row, in multiples of k1 + 1 (the rest of the weights' distances are recomputed).
_KEEP = 3
# A float32 Euclidean pass's lists only certify the k1 + 1 neighbours (every distance the weights use is
# then scored exactly), and its error bound is narrow: 2 (k1 + 1) entries certified every row of the
# benchmark's 6,000 images at 2,048-d, where 32 left 26 rows to the fallback (1.23 s with 63, 1.13 s
# with 42). A bfloat16 pass keeps _KEEP: its bound is about 2^16 times wider.
_KEEP_FLOAT32 = 2
# Rows per block when recomputing the few distances the weights need from features.
_PAIR_BLOCK = 32
# Cells of the membership mask of the k-reciprocal expansion (16 MB of bool).
_MASK_CELLS = 1 << 24
# Jaccard accumulator cells per query block (1 MB of float32: it stays in the L2 cache).
_JACCARD_CELLS = 1 << 18


def rerank(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked ``(Nq, Ng)`` float32 distances from the three distance matrices.

    Same inputs and result as the reference ``re_ranking(q_g_dist, q_q_dist,
    g_g_dist, k1, k2, lambda_value)``: pass plain (not squared) distances, the
    function squares them.  Inputs may be numpy arrays or torch tensors; tensors on
    a GPU are re-ranked there.  The inputs themselves are the only dense matrices:
    no ``(N, N)`` matrix is assembled.
    """
    q_g = _as_matrix(q_g_dist, "q_g_dist")
    q_q = _as_matrix(q_q_dist, "q_q_dist")
    g_g = _as_matrix(g_g_dist, "g_g_dist")
    num_q, num_g = q_g.shape
    if q_q.shape != (num_q, num_q):
        raise ValueError(
            f"q_q_dist: expected shape {(num_q, num_q)} to match q_g_dist {tuple(q_g.shape)}, got {tuple(q_q.shape)}"
        )
    if g_g.shape != (num_g, num_g):
        raise ValueError(
            f"g_g_dist: expected shape {(num_g, num_g)} to match q_g_dist {tuple(q_g.shape)}, got {tuple(g_g.shape)}"
        )
    device = q_g.device
    q_q, g_g = q_q.to(device), g_g.to(device)
    _check_params(k1, k2, lambda_value, num_q + num_g)
    return _rerank(_MatrixSource(q_g, q_q, g_g), num_q, num_g, k1, k2, lambda_value, device)


def rerank_features(
    query: torch.Tensor,
    gallery: torch.Tensor,
    *,
    metric: Metric = "euclidean",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    precision: str = "auto",
) -> np.ndarray:
    """Re-ranked ``(Nq, Ng)`` float32 distances straight from query and gallery features.

    Equal (up to float32 rounding) to ``rerank(d(q, g), d(q, q), d(g, g))`` with
    ``d = pairwise_distance(..., metric=metric)``, but no ``(N, N)`` matrix is ever
    built: distances are computed one row block at a time (on the features' device)
    and only each row's nearest neighbours are kept.  ``metric`` is a built-in name
    or a method's batched distance callable (see :mod:`harness.eval.distance`). For an
    asymmetric callable (GASM's matching weighs by the first argument's heatmap), each
    image's neighbours are ranked by its own row ``d(i, .)``; the matrix entry point would
    instead read the gallery-to-query block as the transpose of ``d(q, g)``.

    ``precision`` (euclidean only) is the arithmetic of the all-pairs pass that proposes each image's
    neighbours: ``"float32"``, ``"bfloat16"`` (about 3x faster GEMMs on CPUs with native bfloat16)
    or ``"auto"`` (bfloat16 where that holds and features are >= 256-d). Either way every distance
    the result depends on is then computed exactly by one float32 kernel, within a proven error
    bound of the pass (:mod:`harness.eval.neighbours`), so both precisions give identical results.
    """
    check_metric(metric)
    q, g = as_features(query, gallery, metric)
    _check_params(k1, k2, lambda_value, q.shape[0] + g.shape[0])
    feats = torch.cat([q, g])
    precision = resolve_precision(precision, feats) if metric == "euclidean" else "float32"
    return _rerank(_FeatureSource(feats, metric, precision), q.shape[0], g.shape[0], k1, k2, lambda_value, q.device)


# --------------------------------------------------------------------------
# Distance sources: rows of the (virtual) N x N matrix, and single entries
# --------------------------------------------------------------------------


class _MatrixSource:
    """Rows of the stacked matrix as the reference sees it after its transpose.

    Row ``i`` is column ``i`` of ``[[q_q, q_g], [q_g.T, g_g]]``; for symmetric
    ``q_q``/``g_g`` that is simply row ``i``.
    """

    def __init__(self, q_g: torch.Tensor, q_q: torch.Tensor, g_g: torch.Tensor) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_q = q_g.shape[0]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        parts = []
        nq = self.num_q
        if start < nq:
            s, e = start, min(stop, nq)
            parts.append(torch.cat([self.q_q[:, s:e].T, self.q_g[s:e]], dim=1))
        if stop > nq:
            s, e = max(start, nq) - nq, stop - nq
            parts.append(torch.cat([self.q_g[:, s:e].T, self.g_g[:, s:e].T], dim=1))
        return torch.cat(parts).float()

    def pair_squares(self, rows: torch.Tensor, cols: torch.Tensor, workers: Workers = INLINE) -> torch.Tensor:
        return self.pairs(rows, cols).square_()

    def pairs(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Entry (i, c) of the transposed stacked matrix, i.e. M[c, i]."""
        nq = self.num_q
        out = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
        for c_is_q in (True, False):
            for i_is_q in (True, False):
                sel = ((cols < nq) == c_is_q) & ((rows < nq) == i_is_q)
                c, i = cols[sel], rows[sel]
                if c_is_q and i_is_q:
                    out[sel] = self.q_q[c, i].float()
                elif c_is_q:
                    out[sel] = self.q_g[c, i - nq].float()
                elif i_is_q:
                    out[sel] = self.q_g[i, c - nq].float()
                else:
                    out[sel] = self.g_g[c - nq, i - nq].float()
        return out


class _FeatureSource:
    """Rows of the distance matrix computed on demand from the stacked features."""

    def __init__(self, feats: torch.Tensor, metric: Metric, precision: str = "float32") -> None:
        self.feats, self.metric, self.precision = feats, metric, precision

    @functools.cached_property
    def norm(self) -> torch.Tensor | None:
        # on first use: the Euclidean path never asks for it (its neighbour pass keeps its own norms)
        return gallery_norm(self.feats, self.metric)

    def pair_squares(self, rows: torch.Tensor, cols: torch.Tensor, workers: Workers = INLINE) -> torch.Tensor:
        """Squared distances of (row, col) pairs; euclidean ones by the canonical exact kernel."""
        if self.metric == "euclidean":
            return exact_squares(self.feats, rows, cols, workers)
        return self.pairs(rows, cols).square_()

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return distance_block(self.feats[start:stop], self.feats, self.metric, self.norm)

    def pairs(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Distances of (row, col) pairs; ``rows`` must be sorted.

        Groups of ``_PAIR_BLOCK`` consecutive rows are scored against the union
        of their columns with the same block function as :meth:`rows`, so a
        method's distance callable is used here too.
        """
        out = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
        bounds = torch.searchsorted(
            rows, torch.arange(0, int(rows[-1]) + _PAIR_BLOCK + 1, _PAIR_BLOCK, device=rows.device)
        )
        for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            if s == e:
                continue
            r, c = rows[s:e], cols[s:e]
            r0 = int(r[0]) - int(r[0]) % _PAIR_BLOCK
            ucols, cinv = torch.unique(c, return_inverse=True)
            norm = None if self.norm is None else self.norm[ucols]
            block = distance_block(self.feats[r0 : r0 + _PAIR_BLOCK], self.feats[ucols], self.metric, norm)
            out[s:e] = block[r - r0, cinv]
        return out


# --------------------------------------------------------------------------
# The algorithm
# --------------------------------------------------------------------------


@contextmanager
def _one_thread_per_kernel(device: torch.device) -> Iterator[None]:
    """torch's kernels and numpy's BLAS on one thread each for the duration (CPU only); the caller's
    settings are restored.

    Re-ranking is a GEMM and thousands of small gathers, sorts and scatters. Each of torch's OpenMP
    regions, and each multi-threaded GEMM, ends in a barrier, and when the cores are shared with
    another busy process (a cluster node's data-loading workers) a thread that waits at it for a
    descheduled sibling wastes its time slice: measured on this 2-core machine under load, 2,000
    images took 5.8 s with 2 torch threads and 0.7 s with one, and a 2-thread GEMM twice its quiet
    time. The caller's thread count is used instead for Python threads over independent pieces
    (:mod:`harness.eval.threads`), the GEMM's row slabs among them.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _blas_threads().limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _blas_threads():
    """The BLAS libraries loaded in this process, found once (a search per call took 1-5 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _rerank(source, num_q: int, num_g: int, k1: int, k2: int, lam: float, device: torch.device) -> np.ndarray:
    n = num_q + num_g
    out = np.empty((num_q, num_g), dtype=np.float32)
    out_t = torch.from_numpy(out)
    threads = torch.get_num_threads()
    # the caller's torch threads, as Python threads for independent pieces (harness.eval.threads)
    with torch.no_grad(), _one_thread_per_kernel(device), Workers(threads if device.type == "cpu" else 1) as workers:
        if isinstance(source, _FeatureSource) and source.metric == "euclidean":
            keep = (_KEEP_FLOAT32 if source.precision == "float32" else _KEEP) * (k1 + 1)
            found = euclidean_neighbours(source.feats, num_q, k1 + 1, keep, out_t, source.precision, threads, workers)
            knn, near, near_sq, row_max = found.knn, found.near, found.near_sq, found.row_max
        else:
            if isinstance(source, _FeatureSource) and isinstance(source.metric, str):
                near, near_sq, row_max = _neighbours_symmetric(source, n, num_q, k1, out_t, device)
            else:
                near, near_sq, row_max = _neighbours(source, n, num_q, k1, out_t, device)
            knn = near[:, : min(k1 + 1, n)].contiguous()
        v_crow, v_col, v_val = _k_reciprocal_weights(source, knn, near, near_sq, row_max, k1, workers)
        if k2 != 1:
            v_crow, v_col, v_val = _query_expansion(v_crow, v_col, v_val, knn[:, :k2], n, workers)
        _combine_jaccard(v_crow, v_col, v_val, num_q, n, lam, out_t, workers)
    return out


def _neighbours(source, n: int, num_q: int, k1: int, out: torch.Tensor, device):
    """One pass over row blocks: each row's max squared distance and nearest items.

    Keeps the ``_KEEP * (k1 + 1)`` nearest items with their squared distances: the
    first ``k1 + 1`` are the neighbour lists, and the longer list already holds
    most distances the weights need later.  The query rows' normalised
    query-gallery part is written into ``out`` on the way (it is the "original
    distance" term of the final combination).
    """
    keep = min(_KEEP * (k1 + 1), n)
    near = torch.empty((n, keep), dtype=torch.int64, device=device)
    near_sq = torch.empty((n, keep), dtype=torch.float32, device=device)
    row_max = torch.empty(n, dtype=torch.float32, device=device)
    for start in range(0, n, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n)
        d = source.rows(start, stop).square_()
        row_max[start:stop] = d.max(dim=1).values
        near_sq[start:stop], near[start:stop] = torch.topk(d, keep, dim=1, largest=False, sorted=True)
        if start < num_q:
            q_stop = min(stop, num_q)
            mx = row_max[start:q_stop, None]
            out[start:q_stop] = (d[: q_stop - start, num_q:] / mx).cpu()
    return near, near_sq, row_max


def _neighbours_symmetric(source, n: int, num_q: int, k1: int, out: torch.Tensor, device):
    """:func:`_neighbours` for a symmetric built-in metric (cosine) at half the arithmetic.

    Row block ``[s, e)`` is scored only against items ``>= s``; the part against later items also
    serves, transposed, as those items' distances to the block (see ``fold_block``). Euclidean
    features take :func:`harness.eval.neighbours.euclidean_neighbours` instead.
    """
    keep = min(_KEEP * (k1 + 1), n)
    near = torch.full((n, keep), -1, dtype=torch.int64, device=device)
    near_sq = torch.full((n, keep), float("inf"), dtype=torch.float32, device=device)
    row_max = torch.zeros(n, dtype=torch.float32, device=device)
    feats, metric, norm = source.feats, source.metric, source.norm
    for start in range(0, n, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n)
        d = distance_block(feats[start:stop], feats[start:], metric, norm[start:]).square_()
        row_max[start:stop] = torch.maximum(row_max[start:stop], d.max(dim=1).values)
        if stop < n:
            row_max[stop:] = torch.maximum(row_max[stop:], d[:, stop - start :].max(dim=0).values)
        fold_block(near, near_sq, d, start, stop, first=start == 0)
        if start < num_q:  # query rows: their gallery columns are all >= start
            q_stop, g0 = min(stop, num_q), max(start, num_q)
            out[start:q_stop, g0 - num_q :] = d[: q_stop - start, g0 - start :].cpu()
    for s in range(0, num_q, 4096):
        e = min(s + 4096, num_q)
        out[s:e] /= row_max[s:e, None].cpu()
    return near, near_sq, row_max


def _pair_squares(source, rows, cols, near, near_sq, workers: Workers = INLINE) -> torch.Tensor:
    """Squared distances of (row, col) pairs: from the kept lists, else from the source."""
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
    found = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
    step = max(1, (1 << 22) // near.shape[1])
    for s in range(0, rows.shape[0], step):
        match = near[rows[s : s + step]] == cols[s : s + step, None]
        hit, pos = match.max(dim=1)
        found[s : s + step] = hit
        out[s : s + step] = near_sq[rows[s : s + step], pos]
    missing = (~found).nonzero(as_tuple=True)[0]
    if missing.numel():
        out[missing] = source.pair_squares(rows[missing], cols[missing], workers)
    return out


def _reciprocal(knn: torch.Tensor, fill: int, workers: Workers = INLINE) -> torch.Tensor:
    """R(i, k): entries of ``knn`` (N, k) that have i among their own first k neighbours, else ``fill``."""
    out = torch.empty_like(knn)
    k = knn.shape[1]
    step = max(1, (1 << 22) // (k * k))

    def block(s: int) -> None:
        nb = knn[s : s + step]
        me = torch.arange(s, s + nb.shape[0], device=knn.device)[:, None, None]
        mutual = (knn[nb] == me).any(dim=2)
        out[s : s + step] = torch.where(mutual, nb, fill)

    workers.map(block, range(0, knn.shape[0], step))
    return out


def _k_reciprocal_weights(
    source,
    knn: torch.Tensor,
    near: torch.Tensor,
    near_sq: torch.Tensor,
    row_max: torch.Tensor,
    k1: int,
    workers: Workers = INLINE,
):
    """Sparse V (CSR triple): Gaussian weights over each item's expanded k-reciprocal set."""
    n, k = knn.shape
    half = int(np.around(k1 / 2.0)) + 1
    recip = _reciprocal(knn, -1, workers)  # (N, k1+1), -1 = not reciprocal
    recip_half = _reciprocal(knn[:, : min(half, k)].contiguous(), -2, workers)  # (N, half), -2 = not reciprocal
    h = recip_half.shape[1]
    half_size = (recip_half >= 0).sum(dim=1)
    # |R(c, k1/2) ∩ R(i, k1)| through a membership mask: block row b's R(i, k1) is marked in mask row
    # b, each of the k x h candidates is one lookup, and the marks are cleared after the block (no
    # k x h x k comparisons, no refill of the mask). Each worker's span of rows has a mask of its own.
    step = max(1, min((1 << 22) // (k * h * k), _MASK_CELLS // n))  # (b, k + k h) is sorted below: b stays small

    def span(bounds: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        mask = torch.zeros(min(step, n) * n, dtype=torch.bool, device=knn.device)
        return [
            _expanded_members(recip, recip_half, half_size, mask, s, min(s + step, bounds[1]), n)
            for s in range(*bounds, step)
        ]

    parts = [part for spans in workers.map(span, workers.spans(n)) for part in spans]
    rows, cols = torch.cat([r for r, _ in parts]), torch.cat([c for _, c in parts])
    dist = _pair_squares(source, rows, cols, near, near_sq, workers) / row_max[rows]
    weight = torch.exp(-dist)
    total = torch.zeros(n, dtype=torch.float32, device=knn.device).index_add_(0, rows, weight)
    crow = _crow(rows, n)
    return crow, cols, weight / total[rows]


def _expanded_members(recip, recip_half, half_size, mask, s: int, e: int, n: int):
    """(row, member) pairs of rows [s, e): R(i, k1) and every R(c, k1/2) that passes the 2/3 test."""
    r = recip[s:e]  # (b, k)
    cand = recip_half[r.clamp(min=0)]  # (b, k, h): R(c, k1/2) of every candidate c
    base = torch.arange(r.shape[0], device=recip.device)[:, None] * n
    marks = (base + r)[r >= 0]
    mask[marks] = True
    inter = (mask[(base[:, :, None] + cand.clamp(min=0)).view(-1)].view(cand.shape) & (cand >= 0)).sum(dim=2)
    mask[marks] = False
    size = half_size[r.clamp(min=0)]
    accept = (r >= 0) & (inter.double() > (2.0 / 3.0) * size.double())
    cand = torch.where(accept[..., None], cand, -1).reshape(r.shape[0], -1)
    members = torch.cat([r, cand], dim=1).sort(dim=1).values
    fresh = members >= 0
    fresh[:, 1:] &= members[:, 1:] != members[:, :-1]
    b_idx, pos = fresh.nonzero(as_tuple=True)
    return b_idx + s, members[b_idx, pos]


def _query_expansion(crow, col, val, nb: torch.Tensor, n: int, workers: Workers = INLINE):
    """V_qe[i] = mean of V over i's k2 nearest neighbours (sparse rows summed, then / k2)."""
    k2 = nb.shape[1]
    row_counts = crow[1:] - crow[:-1]
    step = max(1, int((1 << 23) // max(1, k2 * int(row_counts.float().mean().ceil()))))
    step = min(step, -(-n // workers.count))  # a block for every worker

    def block(s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = nb[s : s + step].reshape(-1)
        owner, c, v = _gather_rows(crow, col, val, src)
        owner = owner // k2 + s
        key, inverse = torch.unique(owner * n + c, return_inverse=True)
        summed = torch.zeros(key.shape[0], dtype=torch.float32, device=val.device).index_add_(0, inverse, v)
        return key // n, key % n, summed / k2

    rows_parts, cols_parts, vals_parts = zip(*workers.map(block, range(0, n, step)))
    rows = torch.cat(rows_parts)
    return _crow(rows, n), torch.cat(cols_parts), torch.cat(vals_parts)


def _combine_jaccard(
    crow, col, val, num_q: int, n: int, lam: float, out: torch.Tensor, workers: Workers = INLINE
) -> None:
    """out[q, g] <- (1 - lam) * jaccard(q, g) + lam * out[q, g], block of queries at a time.

    sum_k min(V[q, k], V[g, k]) is accumulated through an inverted (column) index of V's gallery
    rows, like the reference's invIndex. The index is stored as padded tables, one per power-of-two
    column length, so a query entry's partners are one contiguous row of a table (a gather, not a
    per-pair index computation): the (query, gallery) partial products outnumber the Nq x Ng
    results several times over (3.6x at 6,000 images), and the per-pair index arithmetic of a flat
    CSR walk made this step slower than the reference's own loop. A few popular columns hold
    twenty times the mean count, so one table padded to the longest would waste most of its work;
    per-length tables waste at most half.
    """
    device = val.device
    num_g = n - num_q
    counts = crow[1:] - crow[:-1]
    rows = torch.repeat_interleave(torch.arange(n, device=device), counts)
    in_gallery = rows >= num_q
    g_rows, g_cols, g_vals = rows[in_gallery] - num_q, col[in_gallery], val[in_gallery]
    order = torch.argsort(g_cols, stable=True)
    g_rows, g_cols, g_vals = g_rows[order].int(), g_cols[order], g_vals[order]
    col_count = torch.bincount(g_cols, minlength=n)
    pos = torch.arange(g_cols.shape[0], device=device) - (torch.cumsum(col_count, 0) - col_count)[g_cols]
    length = torch.ceil(torch.log2(col_count.clamp(min=1).double())).long().clamp(min=3)
    length = torch.where(col_count > 0, length, -1)  # -1: no gallery row holds this column
    # All tables share one flat buffer, so every entry lands in its table with one scatter; a
    # column's row of its table starts at offset[column].
    slot = torch.zeros(n, dtype=torch.int64, device=device)
    offset = torch.zeros(n, dtype=torch.int64, device=device)
    layout, size = [], 0  # (power, start in the buffer, columns)
    for power in torch.unique(length).tolist():
        if power < 0:
            continue
        cols = (length == power).nonzero(as_tuple=True)[0]
        slot[cols] = torch.arange(cols.shape[0], device=device)
        offset[cols] = size + (slot[cols] << power)
        layout.append((power, size, cols.shape[0]))
        size += cols.shape[0] << power
    flat_rows = torch.full((size,), num_g, dtype=torch.int32, device=device)  # padding: the scratch column
    flat_vals = torch.zeros(size, dtype=torch.float32, device=device)  # padding: 0
    where = offset[g_cols] + pos
    flat_rows[where], flat_vals[where] = g_rows, g_vals
    tables = [  # (power, gallery rows, values), one row of 2^power per column
        (
            power,
            flat_rows[a : a + (m << power)].view(m, 1 << power),
            flat_vals[a : a + (m << power)].view(m, 1 << power),
        )
        for power, a, m in layout
    ]
    stride = num_g + 1
    block = max(1, _JACCARD_CELLS // stride)  # queries per block: the accumulator stays in cache

    def accumulate(start: int) -> None:
        stop = min(start + block, num_q)
        lo, hi = int(crow[start]), int(crow[stop])
        k, a = col[lo:hi], val[lo:hi]
        base = (
            torch.repeat_interleave(torch.arange(stop - start, device=device, dtype=torch.int32), counts[start:stop])
            * stride
        )
        entry_length = length[k]
        acc = torch.zeros((stop - start) * stride, dtype=torch.float32, device=device)
        for power, t_rows, t_vals in tables:
            sel = (entry_length == power).nonzero(as_tuple=True)[0]
            if sel.numel():
                s = slot[k[sel]]
                acc.index_add_(
                    0, t_rows[s].add_(base[sel, None]).view(-1), torch.minimum(t_vals[s], a[sel, None]).view(-1)
                )
        acc = acc.view(stop - start, stride)[:, :num_g]
        jaccard = 1.0 - acc / (2.0 - acc)
        original = out[start:stop].to(device)
        out[start:stop] = (jaccard * (1.0 - lam) + original * lam).cpu()

    workers.map(accumulate, range(0, num_q, block))


# --------------------------------------------------------------------------
# Sparse helpers (CSR as (crow, col, val) tensors)
# --------------------------------------------------------------------------


def _crow(sorted_rows: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row pointer from sorted row indices."""
    counts = torch.bincount(sorted_rows, minlength=n)
    return torch.cat([torch.zeros(1, dtype=torch.int64, device=sorted_rows.device), torch.cumsum(counts, 0)])


def _gather_rows(crow, col, val, rows: torch.Tensor):
    """Entries of the given CSR rows: (position in ``rows``, column, value)."""
    starts = crow[rows]
    counts = crow[rows + 1] - starts
    owner = torch.repeat_interleave(torch.arange(rows.shape[0], device=rows.device), counts)
    first = torch.cumsum(counts, 0) - counts
    idx = starts[owner] + torch.arange(owner.shape[0], device=rows.device) - first[owner]
    return owner, col[idx], val[idx]


# --------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D matrix, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating-point distances, got dtype {x.dtype}")
    if torch.isnan(x).any():
        raise ValueError(f"{name}: contains {int(torch.isnan(x).sum())} NaN value(s)")
    return x.detach()


def _check_params(k1: Any, k2: Any, lambda_value: Any, n: int) -> None:
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive int, got {value!r}")
    if k2 > k1 + 1:
        raise ValueError(f"k2: must be at most k1 + 1 = {k1 + 1} (it indexes the k1 + 1 nearest neighbours), got {k2}")
    if not isinstance(lambda_value, (int, float)) or isinstance(lambda_value, bool) or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value: must be a number in [0, 1], got {lambda_value!r}")
