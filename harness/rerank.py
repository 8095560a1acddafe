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

from typing import Any

import numpy as np
import torch

from harness.distance import Metric, as_features, check_metric, distance_block, gallery_norm, matmul_nt

# Rows of the distance matrix per block in the neighbour pass; memory is block x N float32.
_ROW_BLOCK = 512
# Nearest items kept per row, in multiples of k1 + 1 (the rest of the weights' distances are recomputed).
_KEEP = 3
# Rows per block when recomputing the few distances the weights need from features.
_PAIR_BLOCK = 32
# Bound on (query, gallery) partial products held at once while accumulating Jaccard.
_JACCARD_PAIRS = 1 << 20  # small enough that the per-block index arrays stay in cache (2x faster than 1 << 23)


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
        raise ValueError(f"q_q_dist: expected shape {(num_q, num_q)} to match q_g_dist {tuple(q_g.shape)}, got {tuple(q_q.shape)}")
    if g_g.shape != (num_g, num_g):
        raise ValueError(f"g_g_dist: expected shape {(num_g, num_g)} to match q_g_dist {tuple(q_g.shape)}, got {tuple(g_g.shape)}")
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
) -> np.ndarray:
    """Re-ranked ``(Nq, Ng)`` float32 distances straight from query and gallery features.

    Equal (up to float32 rounding) to ``rerank(d(q, g), d(q, q), d(g, g))`` with
    ``d = pairwise_distance(..., metric=metric)``, but no ``(N, N)`` matrix is ever
    built: distances are computed one row block at a time (on the features' device)
    and only each row's nearest neighbours are kept.  ``metric`` is a built-in name
    or a method's batched distance callable (see :mod:`harness.distance`). For an
    asymmetric callable (GASM's matching weighs by the first argument's heatmap), each
    image's neighbours are ranked by its own row ``d(i, .)``; the matrix entry point would
    instead read the gallery-to-query block as the transpose of ``d(q, g)``.
    """
    check_metric(metric)
    q, g = as_features(query, gallery, metric)
    _check_params(k1, k2, lambda_value, q.shape[0] + g.shape[0])
    return _rerank(_FeatureSource(torch.cat([q, g]), metric), q.shape[0], g.shape[0], k1, k2, lambda_value, q.device)


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

    def __init__(self, feats: torch.Tensor, metric: Metric) -> None:
        self.feats, self.metric = feats, metric
        self.norm = gallery_norm(feats, metric)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return distance_block(self.feats[start:stop], self.feats, self.metric, self.norm)

    def pairs(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Distances of (row, col) pairs; ``rows`` must be sorted.

        Groups of ``_PAIR_BLOCK`` consecutive rows are scored against the union
        of their columns with the same block function as :meth:`rows`, so a
        method's distance callable is used here too.
        """
        out = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
        bounds = torch.searchsorted(rows, torch.arange(0, int(rows[-1]) + _PAIR_BLOCK + 1, _PAIR_BLOCK, device=rows.device))
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


def _rerank(source, num_q: int, num_g: int, k1: int, k2: int, lam: float, device: torch.device) -> np.ndarray:
    n = num_q + num_g
    out = np.empty((num_q, num_g), dtype=np.float32)
    out_t = torch.from_numpy(out)
    with torch.no_grad():
        if isinstance(source, _FeatureSource) and isinstance(source.metric, str):
            near, near_sq, row_max = _neighbours_symmetric(source, n, num_q, k1, out_t, device)
        else:
            near, near_sq, row_max = _neighbours(source, n, num_q, k1, out_t, device)
        knn = near[:, : min(k1 + 1, n)].contiguous()
        v_crow, v_col, v_val = _k_reciprocal_weights(source, knn, near, near_sq, row_max, k1)
        if k2 != 1:
            v_crow, v_col, v_val = _query_expansion(v_crow, v_col, v_val, knn[:, :k2], n)
        _combine_jaccard(v_crow, v_col, v_val, num_q, n, lam, out_t)
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
    """:func:`_neighbours` for a symmetric built-in metric at half the arithmetic.

    Row block ``[s, e)`` is scored only against items ``>= s``; the part against
    later items also serves, transposed, as those items' distances to the block.
    Every pair is computed once.  After the first block every item's running list
    is full, and a pair can only enter a list if it beats that list's current
    last entry: the pairs below those thresholds (a few per item and block, as
    the lists tighten) are merged in, instead of a top-k over every block.
    """
    keep = min(_KEEP * (k1 + 1), n)
    near = torch.full((n, keep), -1, dtype=torch.int64, device=device)
    near_sq = torch.full((n, keep), float("inf"), dtype=torch.float32, device=device)
    row_max = torch.zeros(n, dtype=torch.float32, device=device)
    feats, metric, norm = source.feats, source.metric, source.norm
    for start in range(0, n, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n)
        d = _squared_block(feats[start:stop], feats[start:], metric, norm[start:])
        later = d[:, stop - start :]  # the block's distances to later items, seen from those items (columns)
        row_max[start:stop] = torch.maximum(row_max[start:stop], d.max(dim=1).values)
        if stop < n:
            row_max[stop:] = torch.maximum(row_max[stop:], later.max(dim=0).values)
        if start == 0:  # empty lists: plain top-k of the rows and of the columns
            k = min(keep, d.shape[1])
            vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=False)
            _merge_nearest(near, near_sq, torch.arange(start, stop, device=device), vals, idx + start)
            for s in range(0, later.shape[1], 8192):
                part = later[:, s : s + 8192]
                vals, idx = torch.topk(part, min(keep, part.shape[0]), dim=0, largest=False, sorted=False)
                _merge_nearest(near, near_sq, torch.arange(stop + s, stop + s + part.shape[1], device=device), vals.T, idx.T + start)
        else:
            r_i, r_j = (d < near_sq[start:stop, -1:]).nonzero(as_tuple=True)
            c_j, c_i = (later < near_sq[None, stop:, -1]).T.nonzero(as_tuple=True)
            # Two merges: a few block rows with long candidate lists, many later items with short ones.
            _merge_pairs(near, near_sq, r_i + start, r_j + start, d[r_i, r_j])
            _merge_pairs(near, near_sq, c_j + stop, c_i + start, later[c_i, c_j])
        if start < num_q:  # query rows: their gallery columns are all >= start
            q_stop, g0 = min(stop, num_q), max(start, num_q)
            out[start:q_stop, g0 - num_q :] = d[: q_stop - start, g0 - start :].cpu()
    for s in range(0, num_q, 4096):
        e = min(s + 4096, num_q)
        out[s:e] /= row_max[s:e, None].cpu()
    return near, near_sq, row_max


def _squared_block(a: torch.Tensor, b: torch.Tensor, metric: str, b_norm: torch.Tensor) -> torch.Tensor:
    """Squared distances; for euclidean straight from one GEMM (no sqrt-then-square)."""
    if metric != "euclidean":
        return distance_block(a, b, metric, b_norm).square_()
    return matmul_nt(a, b).mul_(-2.0).add_((a * a).sum(dim=1)[:, None]).add_(b_norm[None, :]).clamp_(min=0.0)


def _merge_nearest(near, near_sq, rows: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor) -> None:
    """Fold candidate neighbours (values ``vals``, item indices ``idx``) into rows' running lists."""
    best, pos = torch.topk(torch.cat([near_sq[rows], vals], dim=1), near.shape[1], dim=1, largest=False, sorted=True)
    near_sq[rows], near[rows] = best, torch.cat([near[rows], idx], dim=1).gather(1, pos)


def _merge_pairs(near, near_sq, target: torch.Tensor, cand: torch.Tensor, val: torch.Tensor) -> None:
    """Fold (target item, candidate item, squared distance) triples, sorted by target, into the lists."""
    if target.numel() == 0:
        return
    rows, counts = torch.unique_consecutive(target, return_counts=True)
    slot = torch.repeat_interleave(torch.arange(rows.shape[0], device=target.device), counts)
    pos = torch.arange(target.shape[0], device=target.device) - (torch.cumsum(counts, 0) - counts)[slot]
    width = int(counts.max())
    vals = torch.full((rows.shape[0], width), float("inf"), dtype=torch.float32, device=target.device)
    idx = torch.full((rows.shape[0], width), -1, dtype=torch.int64, device=target.device)
    vals[slot, pos], idx[slot, pos] = val, cand
    _merge_nearest(near, near_sq, rows, vals, idx)


def _pair_squares(source, rows, cols, near, near_sq) -> torch.Tensor:
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
        out[missing] = source.pairs(rows[missing], cols[missing]).square_()
    return out


def _reciprocal(knn: torch.Tensor, fill: int) -> torch.Tensor:
    """R(i, k): entries of ``knn`` (N, k) that have i among their own first k neighbours, else ``fill``."""
    out = torch.empty_like(knn)
    k = knn.shape[1]
    step = max(1, (1 << 22) // (k * k))
    for s in range(0, knn.shape[0], step):
        nb = knn[s : s + step]
        me = torch.arange(s, s + nb.shape[0], device=knn.device)[:, None, None]
        mutual = (knn[nb] == me).any(dim=2)
        out[s : s + step] = torch.where(mutual, nb, fill)
    return out


def _k_reciprocal_weights(source, knn: torch.Tensor, near: torch.Tensor, near_sq: torch.Tensor, row_max: torch.Tensor, k1: int):
    """Sparse V (CSR triple): Gaussian weights over each item's expanded k-reciprocal set."""
    n, k = knn.shape
    half = int(np.around(k1 / 2.0)) + 1
    recip = _reciprocal(knn, -1)  # (N, k1+1), -1 = not reciprocal
    recip_half = _reciprocal(knn[:, : min(half, k)].contiguous(), -2)  # (N, half), -2 = not reciprocal
    h = recip_half.shape[1]
    half_size = (recip_half >= 0).sum(dim=1)
    rows_parts, cols_parts = [], []
    step = max(1, (1 << 22) // (k * h * k))
    for s in range(0, n, step):
        r = recip[s : s + step]  # (b, k)
        cand = recip_half[r.clamp(min=0)]  # (b, k, h): R(c, k1/2) of every candidate c
        inter = (cand[..., None] == r[:, None, None, :]).any(dim=3).sum(dim=2)  # |R(c,k1/2) ∩ R(i,k1)|
        size = half_size[r.clamp(min=0)]
        accept = (r >= 0) & (inter.double() > (2.0 / 3.0) * size.double())
        cand = torch.where(accept[..., None], cand, -1).reshape(r.shape[0], -1)
        members = torch.cat([r, cand], dim=1).sort(dim=1).values
        fresh = members >= 0
        fresh[:, 1:] &= members[:, 1:] != members[:, :-1]
        b_idx, pos = fresh.nonzero(as_tuple=True)
        rows_parts.append(b_idx + s)
        cols_parts.append(members[b_idx, pos])
    rows, cols = torch.cat(rows_parts), torch.cat(cols_parts)
    dist = _pair_squares(source, rows, cols, near, near_sq) / row_max[rows]
    weight = torch.exp(-dist)
    total = torch.zeros(n, dtype=torch.float32, device=knn.device).index_add_(0, rows, weight)
    crow = _crow(rows, n)
    return crow, cols, weight / total[rows]


def _query_expansion(crow, col, val, nb: torch.Tensor, n: int):
    """V_qe[i] = mean of V over i's k2 nearest neighbours (sparse rows summed, then / k2)."""
    k2 = nb.shape[1]
    row_counts = crow[1:] - crow[:-1]
    rows_parts, cols_parts, vals_parts = [], [], []
    step = max(1, int((1 << 23) // max(1, k2 * int(row_counts.float().mean().ceil()))))
    for s in range(0, n, step):
        src = nb[s : s + step].reshape(-1)
        owner, c, v = _gather_rows(crow, col, val, src)
        owner = owner // k2 + s
        key, inverse = torch.unique(owner * n + c, return_inverse=True)
        summed = torch.zeros(key.shape[0], dtype=torch.float32, device=val.device).index_add_(0, inverse, v)
        rows_parts.append(key // n)
        cols_parts.append(key % n)
        vals_parts.append(summed / k2)
    rows = torch.cat(rows_parts)
    return _crow(rows, n), torch.cat(cols_parts), torch.cat(vals_parts)


def _combine_jaccard(crow, col, val, num_q: int, n: int, lam: float, out: torch.Tensor) -> None:
    """out[q, g] <- (1 - lam) * jaccard(q, g) + lam * out[q, g], block of queries at a time.

    sum_k min(V[q, k], V[g, k]) is accumulated through an inverted index of V's
    gallery rows (column -> gallery rows holding it), like the reference's invIndex.
    """
    device = val.device
    num_g = n - num_q
    rows = torch.repeat_interleave(torch.arange(n, device=device), crow[1:] - crow[:-1])
    in_gallery = rows >= num_q
    g_rows, g_cols, g_vals = rows[in_gallery] - num_q, col[in_gallery], val[in_gallery]
    order = torch.argsort(g_cols, stable=True)
    inv_rows, inv_vals = g_rows[order], g_vals[order]
    inv_ptr = _crow(g_cols[order], n)
    col_count = inv_ptr[1:] - inv_ptr[:-1]
    # Partial products per query, to size the query blocks.
    q_entries = int(crow[num_q])
    per_entry = col_count[col[:q_entries]]
    per_query = torch.zeros(num_q, dtype=torch.int64, device=device).index_add_(0, rows[:q_entries], per_entry)
    cum = torch.cumsum(per_query, 0).cpu()
    start = 0
    max_rows = max(1, (1 << 27) // (4 * num_g))  # accumulator of at most ~128 MB
    while start < num_q:
        base = int(cum[start - 1]) if start else 0
        stop = int(torch.searchsorted(cum, torch.tensor(base + _JACCARD_PAIRS), right=True))
        stop = min(max(stop, start + 1), start + max_rows, num_q)
        owner, k, a = _gather_rows(crow, col, val, torch.arange(start, stop, device=device))
        pair_owner, g, b = _gather_rows(inv_ptr, inv_rows, inv_vals, k)
        acc = torch.zeros((stop - start) * num_g, dtype=torch.float32, device=device)
        acc.index_add_(0, owner[pair_owner] * num_g + g, torch.minimum(a[pair_owner], b))
        acc = acc.view(stop - start, num_g)
        jaccard = 1.0 - acc / (2.0 - acc)
        original = out[start:stop].to(device)
        out[start:stop] = (jaccard * (1.0 - lam) + original * lam).cpu()
        start = stop


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
