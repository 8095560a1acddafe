"""Each item's nearest neighbours and largest distance under the Euclidean metric, exact, from features.

Re-ranking needs, for every one of the ``N = Nq + Ng`` images, its ``k1 + 1`` nearest images, a few
more exact distances and its largest distance. The all-pairs pass that finds them is a GEMM and
dominates the time at 2,048-d; this CPU runs a bfloat16 GEMM about 3x faster than a float32 one.
The pass therefore only *proposes* candidates, and every distance that re-ranking uses is then
computed again by one canonical kernel, so the float32 and the bfloat16 pass give identical results:

1. **Candidates.** One pass over row blocks (each pair once: a block against itself and the later
   items) keeps each item's ``keep`` smallest and ``_FAR`` largest *approximate* squared distances
   ``a(i, j)`` in running lists. Blocks holding query rows are always float32 (their query-gallery
   part is also the "original distance" term of the result, and both precisions must agree on it).
2. **Certification.** ``|a(i, j) - c(i, j)| <= E(i, j)`` for the canonical value ``c`` (the bound is
   derived in :func:`_pair_bound`). With ``U_i`` the ``k``-th smallest ``a + E`` in row ``i``'s list,
   the ``k``-th smallest canonical distance is at most ``U_i``; any item whose ``a - E`` exceeds it
   cannot be among (or tied with) the ``k`` nearest. Items outside the list have ``a`` at least the
   list's last entry, so a row is certified when that entry minus the row's largest bound exceeds
   ``U_i``. The largest distance is certified the same way from the far list. Rows that are not
   (exact duplicates in bulk, or bfloat16's bound too wide for the data) get a float32 pass over
   their whole row, which certifies every row.
3. **Canonical re-scoring.** Every candidate pair is scored as ``sum((x_i - x_j) ** 2)`` in float32
   by the same kernel (:func:`exact_squares`, one thread, one row of D at a time, so a pair's value
   does not depend on what else is in the batch), its candidates are ordered by (distance, index),
   and the first ``k`` are the neighbours: ties go to the lower index, in both precisions.

The difference form also avoids the cancellation of ``|x|^2 + |y|^2 - 2 x.y`` for near neighbours.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.eval.distance import matmul_nt
from harness.eval.threads import INLINE, Workers

PRECISIONS = ("auto", "float32", "bfloat16")

_ROW_BLOCK = 512  # rows per block; memory is block x N float32
# The first block's top-k sets every later item's running list, and so the bar a pair must beat in
# every later block. Set from 1,024 items rather than 512, it lets far fewer pairs through to be
# merged (6,000 images at 2,048-d: the pass took 1.09 s with 512, 1.02 s with 1,024).
_FIRST_BLOCK = 1024
# Rows per GEMM call of the float32 pass. Each call runs on one BLAS thread and the calls of a block
# are spread over the workers (harness.eval.threads): a GEMM whose BLAS threads meet at barriers took
# twice as long with one busy process beside it (6,000 images: 0.49 s -> 0.99 s), slabs on Python
# threads 1.5 times. The slabs do not depend on the thread count, so neither do the distances.
_GEMM_ROWS = 256
# Largest approximate distances kept per row, to certify the row maximum. 8 certified every row of
# the benchmark's features (whose largest distances crowd together more than trained features'); 4
# left 84 of 6,000 rows to the float32 fallback.
_FAR = 8
_U32 = 2.0**-24  # float32 unit roundoff
_UBF = 2.0**-8  # bfloat16 unit roundoff
_RESCORE_ELEMENTS = 1 << 19  # feature elements per canonical re-scoring chunk (2 MB; 1 MB and 4 MB were slower)
# auto picks bfloat16 from this many images: below it the re-scoring (N x ~60 pairs x D, memory-bound)
# costs about what the faster GEMM (N^2 / 2 pairs x D) saves (measured: no gain at 2,000 images).
_BF16_FROM = 20_000


@dataclass
class Neighbours:
    knn: torch.Tensor  # (N, k) int64: the k nearest items, ordered by (distance, index)
    near: torch.Tensor  # (N, W) int64: items whose exact squared distance is known (-1: padding)
    near_sq: torch.Tensor  # (N, W) float32: those distances (inf: padding)
    row_max: torch.Tensor  # (N,) float32: each row's largest exact squared distance
    fallback_rows: int  # rows that needed a float32 pass of their own (for tests and benchmarks)


def resolve_precision(precision: str, feats: torch.Tensor) -> str:
    """``auto``: bfloat16 where the CPU has native bfloat16 dot products and the all-pairs GEMM
    dominates (>= 256-d features, >= 20,000 images); float32 otherwise (and on GPUs)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if feats.device.type == "cpu" and feats.shape[1] >= 256 and feats.shape[0] >= _BF16_FROM and _cpu_has_bf16():
        return "bfloat16"
    return "float32"


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def exact_squares(
    feats: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, workers: Workers = INLINE
) -> torch.Tensor:
    """The canonical squared distance of each (row, col) pair: ``sum((x_r - x_c) ** 2)`` in float32.

    Symmetric bit for bit (``fl(a - b) = -fl(b - a)``), and a pair's value does not depend on the
    other pairs in the call: each is one row of D reduced by the same single-threaded kernel (so
    neither on how the pairs are spread over ``workers``).
    """
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=feats.device)
    step = max(1, _RESCORE_ELEMENTS // max(1, feats.shape[1]))

    def span(bounds: tuple[int, int]) -> None:
        # Two buffers for the whole span: a fresh pair per chunk cost a page-faulting allocation
        # each (the single-threaded re-scoring of 45,000 pairs at 2,048-d took 57-200 ms, now 50 ms).
        diff = torch.empty((step, feats.shape[1]), dtype=feats.dtype, device=feats.device)
        other = torch.empty_like(diff)
        for s in range(bounds[0], bounds[1], step):
            e = min(s + step, bounds[1])
            d, o = diff[: e - s], other[: e - s]
            # index_select copies whole rows; advanced indexing (feats[idx]) took twice as long here
            torch.index_select(feats, 0, rows[s:e], out=d)
            torch.index_select(feats, 0, cols[s:e], out=o)
            torch.sum(d.sub_(o).square_(), dim=1, out=out[s:e])

    workers.map(span, workers.spans(rows.shape[0], align=step))
    return out


def euclidean_neighbours(
    feats: torch.Tensor,
    num_q: int,
    k: int,
    keep: int,
    out: torch.Tensor,
    precision: str,
    gemm_threads: int = 0,
    workers: Workers = INLINE,
) -> Neighbours:
    """The exact neighbours (see the module docstring); writes the query rows' float32 squared
    distances to the gallery, divided by their exact row maximum, into ``out`` (Nq x Ng, CPU).
    ``gemm_threads``: torch threads for the bfloat16 GEMM (0: leave torch's setting alone);
    ``workers``: threads for the independent pieces (GEMM slabs, each block's list folds, the re-scoring)."""
    n, device = feats.shape[0], feats.device
    keep, far_keep, k = min(keep, n), min(_FAR, n), min(k, n)
    norms = torch.empty(n, dtype=torch.float32, device=device)
    workers.map(  # in slabs: one temporary of the whole feature matrix cost 10 ms at 2,000 images
        lambda s: torch.sum(feats[s : s + _GEMM_ROWS].square(), dim=1, out=norms[s : s + _GEMM_ROWS]),
        range(0, n, _GEMM_ROWS),
    )
    low = feats.bfloat16() if precision == "bfloat16" else None
    near = torch.full((n, keep), -1, dtype=torch.int64, device=device)
    near_sq = torch.full((n, keep), float("inf"), dtype=torch.float32, device=device)
    far = torch.full((n, far_keep), -1, dtype=torch.int64, device=device)
    far_neg = torch.full((n, far_keep), float("inf"), dtype=torch.float32, device=device)  # -distance
    bounds = [0, *range(min(_FIRST_BLOCK, n), n, _ROW_BLOCK), n]
    buffer = torch.empty((min(_FIRST_BLOCK, n) * n,), dtype=torch.float32, device=device)  # every block's d
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if low is None or start < num_q:
            d = buffer[: (stop - start) * (n - start)].view(stop - start, n - start)
            _float32_block(feats, norms, d, start, stop, workers)
        else:
            d = (
                _low_gemm(low[start:stop], low[start:], gemm_threads)
                .float()
                .mul_(-2.0)
                .add_(norms[start:stop, None])
                .add_(norms[None, start:])
                .clamp_(min=0.0)
            )
        workers.map(  # four disjoint sets of lists, folded side by side (the heaviest first)
            lambda job, d=d, start=start, stop=stop: fold_block(
                *job[:2], d, start, stop, first=start == 0, largest=job[2], sides=(job[3],)
            ),
            [(*lists, side) for lists in ((near, near_sq, False), (far, far_neg, True)) for side in ("block", "later")],
        )
        if start < num_q:  # query rows: their gallery columns are all >= start
            q_stop, g0 = min(stop, num_q), max(start, num_q)
            out[start:q_stop, g0 - num_q :] = d[: q_stop - start, g0 - start :].cpu()
    bound = _Bound(feats, norms, low)
    cand_rows, cand_cols, far_rows, far_cols, fallback = _candidates(bound, near, near_sq, far, far_neg, k, n)
    if fallback.numel():
        rows, cols, frows, fcols = _full_row_candidates(feats, norms, fallback, k)
        cand_rows, cand_cols = torch.cat([cand_rows, rows]), torch.cat([cand_cols, cols])
        far_rows, far_cols = torch.cat([far_rows, frows]), torch.cat([far_cols, fcols])
    result = _exact_lists(feats, cand_rows, cand_cols, far_rows, far_cols, n, k, workers)
    result.fallback_rows = int(fallback.numel())
    for s in range(0, num_q, 4096):
        e = min(s + 4096, num_q)
        out[s:e] /= result.row_max[s:e, None].cpu()
    return result


def _float32_block(
    feats: torch.Tensor, norms: torch.Tensor, d: torch.Tensor, start: int, stop: int, workers: Workers
) -> None:
    """``d`` <- the approximate squared distances of rows [start, stop) to items [start, N), by slabs
    of ``_GEMM_ROWS`` rows on the workers.

    A slab's GEMM covers only the items from its own first row on; its part left of that (pairs
    within the block, below the diagonal) is then copied from the earlier slabs, transposed: at
    2,000 images a third of the pass's GEMM work was such repeated pairs. Either value of a pair is
    within the error bound, and which one fills a place does not depend on the thread count. The
    query rows' gallery columns, which ``out`` takes as they are, always lie right of the diagonal:
    they are the GEMM's own values.
    """

    def gemm(s: int) -> None:
        e = min(s + _GEMM_ROWS, stop)
        squared_block(feats[s:e], feats[s:], norms[s:e], norms[s:], out=d[s - start : e - start, s - start :])

    def mirror(s: int) -> None:
        e = min(s + _GEMM_ROWS, stop)
        d[s - start : e - start, : s - start] = d[: s - start, s - start : e - start].T

    slabs = range(start, stop, _GEMM_ROWS)
    workers.map(gemm, slabs)
    workers.map(mirror, slabs)


def _low_gemm(a: torch.Tensor, b: torch.Tensor, threads: int) -> torch.Tensor:
    if not threads:
        return a @ b.T
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return a @ b.T
    finally:
        torch.set_num_threads(before)


def squared_block(
    a: torch.Tensor, b: torch.Tensor, a_norm: torch.Tensor, b_norm: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Float32 squared distances from one GEMM: ``|a|^2 + |b|^2 - 2 a.b``, clamped at 0."""
    return matmul_nt(a, b, out=out).mul_(-2.0).add_(a_norm[:, None]).add_(b_norm[None, :]).clamp_(min=0.0)


# -- the running lists -----------------------------------------------------------------------------


def fold_block(
    near,
    near_sq,
    d: torch.Tensor,
    start: int,
    stop: int,
    *,
    first: bool,
    largest: bool = False,
    sides: tuple[str, ...] = ("block", "later"),
) -> None:
    """Fold block rows [start, stop) x items [start, N) of values ``d`` into both sides' running lists
    (of the smallest values; with ``largest``, of the largest).

    ``sides``: the lists to fold into, those of the block's rows (``"block"``) and/or those of the
    later items (``"later"``). The two read and write disjoint lists, so they may run side by side.

    The part against later items also serves, transposed, as those items' values to the block.
    After the first block every list is full, and a pair can only enter a list if it beats that
    list's current last entry: those few pairs are merged instead of a top-k over every block.
    ``largest``: the lists keep the largest values, stored negated (the smallest of ``-d``), and
    ``d`` is compared as it is rather than negated in full (two passes over the block saved).
    """
    n, keep, device = near.shape[0], near.shape[1], d.device
    later = d[:, stop - start :]
    sign = -1.0 if largest else 1.0
    if first:
        if "block" in sides:
            k = min(keep, d.shape[1])
            vals, idx = torch.topk(d, k, dim=1, largest=largest, sorted=False)
            merge_nearest(near, near_sq, torch.arange(start, stop, device=device), vals * sign, idx + start)
        for s in range(0, later.shape[1] if "later" in sides else 0, 8192):
            part = later[:, s : s + 8192]
            vals, idx = torch.topk(part, min(keep, part.shape[0]), dim=0, largest=largest, sorted=False)
            merge_nearest(
                near,
                near_sq,
                torch.arange(stop + s, stop + s + part.shape[1], device=device),
                vals.T * sign,
                idx.T + start,
            )
        return
    # A pair enters a row's list when it beats the last entry: d < last, or for largest -d < last.
    if "block" in sides:
        row_last = near_sq[start:stop, -1:] * sign
        r_i, r_j = ((d > row_last) if largest else (d < row_last)).nonzero(as_tuple=True)
        merge_pairs(near, near_sq, r_i + start, r_j + start, d[r_i, r_j] * sign)
    if "later" in sides:
        col_last = near_sq[None, stop:n, -1] * sign
        c_i, c_j = ((later > col_last) if largest else (later < col_last)).nonzero(as_tuple=True)
        order = torch.argsort(c_j, stable=True)  # by the later item, then by block row (merge_pairs' order)
        c_i, c_j = c_i[order], c_j[order]
        merge_pairs(near, near_sq, c_j + stop, c_i + start, later[c_i, c_j] * sign)


def merge_nearest(near, near_sq, rows: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor) -> None:
    """Fold candidate neighbours (values ``vals``, item indices ``idx``) into rows' running lists."""
    best, pos = torch.topk(torch.cat([near_sq[rows], vals], dim=1), near.shape[1], dim=1, largest=False, sorted=True)
    near_sq[rows], near[rows] = best, torch.cat([near[rows], idx], dim=1).gather(1, pos)


def merge_pairs(near, near_sq, target: torch.Tensor, cand: torch.Tensor, val: torch.Tensor) -> None:
    """Fold (target item, candidate item, value) triples, sorted by target, into the lists."""
    if target.numel() == 0:
        return
    rows, counts = torch.unique_consecutive(target, return_counts=True)
    slot = torch.repeat_interleave(torch.arange(rows.shape[0], device=target.device), counts)
    pos = torch.arange(target.shape[0], device=target.device) - (torch.cumsum(counts, 0) - counts)[slot]
    width = int(counts.max())
    vals = torch.full((rows.shape[0], width), float("inf"), dtype=torch.float32, device=target.device)
    idx = torch.full((rows.shape[0], width), -1, dtype=torch.int64, device=target.device)
    vals[slot, pos], idx[slot, pos] = val, cand
    merge_nearest(near, near_sq, rows, vals, idx)


# -- the error bound and certification --------------------------------------------------------------


class _Bound:
    """``E(i, j)``: a bound on |approximate - canonical| squared distance of a pair.

    With ``R = |x|``, ``v`` float32's and ``u`` bfloat16's unit roundoff and ``D`` dimensions, for
    the exact ``d = |x_i - x_j|^2 <= (R_i + R_j)^2``:

    * canonical: the subtraction, the square and a D-term float32 sum: ``|c - d| <= gamma_{D+2} d``
      with ``gamma_m = m v / (1 - m v)``;
    * float32 GEMM: ``|x.y|`` accumulated with error ``<= gamma_D R_i R_j``, the norms with
      ``gamma_D R^2``, two additions: together ``<= (2D + 4) v (R_i + R_j)^2`` (first order);
    * bfloat16 GEMM: inputs rounded to ``x~ = x - e`` give ``|x.y - x~.y~| <= |e_i| R_j + R~_i |e_j|``
      (Cauchy-Schwarz on ``e_i.y + x~_i.e_j``; ``|e|`` is measured, not bounded), products exact
      in the float32 accumulator (8 + 8 significant bits), the output rounded to bfloat16:
      ``<= u |s| / (1 - u)``, where ``|s|`` is recovered from the approximate value itself.

    ``E = 2 (|e_i| R_j + R~_i |e_j|) + 2.02 u S + 4 (D + 8) v (R_i + R_j)^2``, the last term with
    a factor 2 over the first-order sum of both sides' float32 terms; without bfloat16 only that
    term. The bfloat16 term applies to every pair of a bfloat16 pass, the float32 blocks included
    (over-wide there, never too narrow).
    """

    def __init__(self, feats: torch.Tensor, norms: torch.Tensor, low: torch.Tensor | None) -> None:
        self.radius = norms.double().sqrt() * (1 + 1e-6)
        self.norms = norms
        self.fp32 = 4.0 * (feats.shape[1] + 8) * _U32
        self.low = low is not None
        if self.low:
            self.err = (feats.double() - low.double()).norm(dim=1) * (1 + 1e-6)
            self.radius_low = low.double().norm(dim=1) * (1 + 1e-6)
        self.max_radius = float(self.radius.max())

    def pairs(self, rows: torch.Tensor, cols: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
        r_i, r_j = self.radius[rows], self.radius[cols]
        bound = self.fp32 * (r_i + r_j) ** 2
        if self.low:
            both = self.norms[rows].double() + self.norms[cols].double()
            dot = torch.where(approx > 0, (both - approx.double()).abs() / 2, both / 2) * (1 + 2**-6) + self.fp32 * both
            bound = bound + 2 * (self.err[rows] * r_j + self.radius_low[rows] * self.err[cols]) + 2.02 * _UBF * dot
        return bound

    def outside(self, rows: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
        """``E(i, j)`` for any item ``j`` of row ``i`` whose approximate value is ``approx`` (per row):
        the largest bound over every possible partner (its radius and rounding error are not known)."""
        r_i, r_max = self.radius[rows], self.max_radius
        bound = self.fp32 * (r_i + r_max) ** 2
        if self.low:
            n_i, n_min, n_max = self.norms[rows].double(), float(self.norms.min()), float(self.norms.max())
            dot = torch.maximum(n_i + n_max - approx, approx - n_i - n_min).clamp(min=0) / 2 * (
                1 + 2**-6
            ) + self.fp32 * (n_i + n_max)
            bound = (
                bound + 2 * (self.err[rows] * r_max + self.radius_low[rows] * float(self.err.max())) + 2.02 * _UBF * dot
            )
        return bound


def _candidates(bound: _Bound, near, near_sq, far, far_neg, k: int, n: int):
    """Candidate pairs from the running lists, and the rows the lists cannot certify."""
    rows = torch.arange(n, device=near.device)[:, None].expand_as(near)
    e_near = bound.pairs(rows.reshape(-1), near.reshape(-1).clamp(min=0), near_sq.reshape(-1)).view(near.shape)
    a, f_a, all_rows = near_sq.double(), -far_neg.double(), torch.arange(n, device=near.device)
    upper = torch.kthvalue(a + e_near, k, dim=1).values  # >= the k-th smallest canonical distance
    ok = torch.ones(n, dtype=torch.bool, device=near.device)
    if near.shape[1] < n:
        # Items outside the list have a in [a_last, a_max]; a - E(a) is concave in a: check both ends.
        for end in (a[:, -1], f_a[:, 0]):
            ok &= (end - bound.outside(all_rows, end)) > upper
    take = (a - e_near) <= upper[:, None]
    f_rows = all_rows[:, None].expand_as(far)
    e_far = bound.pairs(f_rows.reshape(-1), far.reshape(-1).clamp(min=0), f_a.reshape(-1).float()).view(far.shape)
    lower = (f_a - e_far).max(dim=1).values  # <= the largest canonical distance
    if far.shape[1] < n:
        # Items outside the far list have a in [0, f_last]; a + E(a) is convex in a: check both ends.
        for end in (torch.zeros_like(lower), f_a[:, -1]):
            ok &= (end + bound.outside(all_rows, end)) < lower
    f_take = (f_a + e_far) >= lower[:, None]
    take &= ok[:, None]
    f_take &= ok[:, None]
    r, c = take.nonzero(as_tuple=True)
    fr, fc = f_take.nonzero(as_tuple=True)
    return r, near[r, c], fr, far[fr, fc], (~ok).nonzero(as_tuple=True)[0]


def _full_row_candidates(feats: torch.Tensor, norms: torch.Tensor, rows: torch.Tensor, k: int):
    """Candidates of whole rows from a float32 pass (always certified: no item is left out)."""
    bound = _Bound(feats, norms, None)
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    cols_all = torch.arange(feats.shape[0], device=feats.device)
    for s in range(0, rows.shape[0], _ROW_BLOCK):
        r = rows[s : s + _ROW_BLOCK]
        a = squared_block(feats[r], feats, norms[r], norms)
        e = bound.pairs(r[:, None].expand_as(a).reshape(-1), cols_all.repeat(r.shape[0]), a.reshape(-1)).view(a.shape)
        a = a.double()
        upper = torch.kthvalue(a + e, k, dim=1).values
        lower = (a - e).max(dim=1).values
        for (i, j), dst in (
            ((a - e <= upper[:, None]).nonzero(as_tuple=True), 0),
            ((a + e >= lower[:, None]).nonzero(as_tuple=True), 2),
        ):
            parts[dst].append(r[i])
            parts[dst + 1].append(j)
    return tuple(torch.cat(p) for p in parts)


def _symmetric_squares(
    feats: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n: int, workers: Workers = INLINE
) -> torch.Tensor:
    """exact_squares of the pairs, each unordered pair scored once: candidate lists are mostly
    mutual (i near j, j near i), and the canonical value is symmetric bit for bit."""
    low, high = torch.minimum(rows, cols), torch.maximum(rows, cols)
    pairs, where = torch.unique(low * n + high, return_inverse=True)
    return exact_squares(feats, pairs // n, pairs % n, workers)[where]


def _exact_lists(feats, rows, cols, far_rows, far_cols, n: int, k: int, workers: Workers = INLINE) -> Neighbours:
    """Re-score candidates canonically; order each row's by (distance, index); take the row maxima."""
    device = feats.device
    key = torch.unique(rows * n + cols)  # sorted by row, then by column
    rows, cols = key // n, key % n
    vals = _symmetric_squares(feats, rows, cols, n, workers)
    order = torch.argsort(vals, stable=True)  # by value; equal values keep the column order
    order = order[torch.argsort(rows[order], stable=True)]  # then grouped by row
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = torch.bincount(rows, minlength=n)
    pos = torch.arange(rows.shape[0], device=device) - (torch.cumsum(counts, 0) - counts)[rows]
    width = int(counts.max())
    near = torch.full((n, width), -1, dtype=torch.int64, device=device)
    near_sq = torch.full((n, width), float("inf"), dtype=torch.float32, device=device)
    near[rows, pos], near_sq[rows, pos] = cols, vals
    far_vals = exact_squares(feats, far_rows, far_cols, workers)
    row_max = torch.zeros(n, dtype=torch.float32, device=device).scatter_reduce_(0, far_rows, far_vals, reduce="amax")
    return Neighbours(near[:, :k].contiguous(), near, near_sq, row_max, 0)
