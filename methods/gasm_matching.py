"""GASM's guided adaptive spatial matching at the paper's resolution, in bounded memory.

The paper matches every location of the query's FCN map with the gallery image's map: "For W×H
spatial features in x, x_{w,h} attempt to search similar local spatial feature in y", and weights
the scores by the query's saliency heatmap (eq. 4). At 384x128 with last stride 1 that map is 24x8 =
192 locations of 2048 floats: 1.5 MB per image, 30 GB of float32 features at Market-1501 size
(3,368 queries + 15,913 gallery images), and 151 MFLOP per query-gallery pair, 8 PFLOP for all pairs.
So, as the first author's own FastReID code for spatial matching does, the spatial distance re-scores
only each query's top-k gallery images by the global distance, and the local features live on disk:

* Evidence. fast-reid, projects/PartialReID/partialreid/dsr_distance.py (L. He, 2020-07-12, commit
  115de22; config TEST.DSR.TOPK = 30 since d63a3ce): ``index = np.argsort(distmat, axis=1)``, then
  for ``j in range(topk)`` the query's spatial features are matched with gallery ``index[i, j]``'s
  (``(1 - q.t() @ g).min(1)``, weighted by the query's foreground scores and summed: GASM's eq. 4),
  every other pair keeps a distance of 100, and the result is ``0.98 * dsr + 0.02 * global``
  (dsr_evaluation.py then blends ``0.99 * dist + 0.01 * global`` again). The top k are re-ranked by
  the spatial term, the rest follow in their global order.
* Weighting. GASM's paper says "the global matching distance provides the complementary matching
  information to GASM by average weighting operation", so the re-scored pairs get
  ``(1 - w) d_GASM + w d_global`` with w = ``global_weight`` = 0.5 by default (the author's
  partial-re-ID code's 0.03 is the other setting worth trying); every other gallery image keeps
  ``d_global`` plus 2, the largest a re-scored distance can be, so it ranks after the re-scored ones
  in its global order (the code's 100).
* k = 30, the author's TOPK (``topk``). Rank-1 and most of mAP come from the top 30.
* Memory. Local features go to a float16 file (:class:`SpatialFile`, 15 GB at Market size), written
  and read a block at a time through a memory map that covers only that block, so the resident set
  stays at one block. The re-scoring holds one chunk of query features (``memory`` bytes) and sweeps
  the gallery file once per chunk, block by block; each gallery image is matched with the queries of
  the chunk that ranked it in their top k, on the GPU when the features are there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

DEFAULT_TOPK = 30
DEFAULT_GLOBAL_WEIGHT = 0.5
_OUTSIDE = 2.0  # added to the global distance of pairs not re-scored: more than any re-scored distance


class SpatialFile:
    """Local features (count, locations, dim) in a float16 file, one block mapped at a time."""

    def __init__(self, path: str | Path, count: int, locations: int, dim: int, *, create: bool = True):
        self.path, self.count, self.locations, self.dim = Path(path), count, locations, dim
        self.row_bytes = locations * dim * 2
        if create:
            with open(self.path, "wb") as f:
                f.truncate(count * self.row_bytes)

    def _map(self, start: int, stop: int, mode: str) -> np.memmap:
        return np.memmap(
            self.path, dtype=np.float16, mode=mode, offset=start * self.row_bytes,
            shape=(stop - start, self.locations, self.dim),
        )  # fmt: skip

    def write(self, start: int, block: torch.Tensor) -> None:
        """Rows start.. of the file from a (n, locations, dim) block (any device, any float dtype)."""
        view = self._map(start, start + block.shape[0], "r+")
        view[:] = block.detach().to("cpu", torch.float16).numpy()
        view.flush()
        del view  # unmapped: its pages leave this process's resident set

    def read(
        self, start: int, stop: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Rows [start, stop) in `dtype` on `device`, converted 64 rows at a time (no float32 copy of
        the whole range)."""
        out = torch.empty((stop - start, self.locations, self.dim), dtype=dtype, device=device)
        for s in range(start, stop, 64):
            e = min(stop, s + 64)
            view = self._map(s, e, "r")
            out[s - start : e - start] = torch.from_numpy(np.array(view)).to(device)
            del view
        return out


def global_distance(q_global: torch.Tensor, g_global: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Cosine distances of unit global features, (Nq, Ng) float32 on the features' device."""
    out = torch.empty(q_global.shape[0], g_global.shape[0], dtype=torch.float32, device=q_global.device)
    for s in range(0, q_global.shape[0], block):
        torch.matmul(q_global[s : s + block], g_global.T, out=out[s : s + block])
    return out.neg_().add_(1.0).clamp_(min=0.0)


def local_distance(q_local: torch.Tensor, q_heat: torch.Tensor, g_local: torch.Tensor) -> torch.Tensor:
    """Eq. 4 for n pairs: ``sum_l S_q[l] (1 - max_m cos(q_l, g_m))`` with q_local (n, L, D), q_heat
    (n, L) summing to 1 and g_local (L', D) one gallery image, or (n, L', D) one per pair."""
    if g_local.dim() == 2:
        best = (q_local.reshape(-1, q_local.shape[-1]) @ g_local.T).amax(dim=1).view(q_local.shape[:2])
    else:
        best = torch.bmm(q_local, g_local.transpose(1, 2)).amax(dim=2)
    return 1.0 - (best * q_heat).sum(dim=1)


def topk_spatial_distance(
    q_global: torch.Tensor,
    g_global: torch.Tensor,
    q_heat: torch.Tensor,
    q_file: SpatialFile,
    g_file: SpatialFile,
    *,
    topk: int = DEFAULT_TOPK,
    global_weight: float = DEFAULT_GLOBAL_WEIGHT,
    memory: int = 1 << 31,
    gallery_block: int = 256,
    dtype: torch.dtype = torch.float32,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """(Nq, Ng) distances: each query's `topk` gallery images by global distance re-scored with
    ``(1 - global_weight) d_GASM + global_weight d_global``, the others ``d_global + 2``.

    Global features (unit rows) and query heatmaps are in memory on the device the work runs on;
    local features in the two files. Peak memory beside the (Nq, Ng) result: `memory` bytes of
    query features, one gallery block and one query's best-match scores per pair. The similarities
    are computed in `dtype`: bfloat16 halves the time on CPUs with AVX512-BF16 (and the memory) at
    about 1e-3 of distance (benchmarks/gasm_full_matching.py measures both). `base`: the (Nq, Ng)
    global distance to pick the top k by and to blend with, when not the cosine distance of the
    global features (a re-ranked one; it is overwritten).
    """
    device = q_global.device
    dist = global_distance(q_global, g_global) if base is None else base.to(device, torch.float32)
    num_q, num_g = dist.shape
    k = min(topk, num_g)
    top = torch.topk(dist, k, dim=1, largest=False).indices  # (Nq, k)
    rescored = torch.full((num_q, k), float("nan"), device=device)
    chunk = max(1, memory // (q_file.locations * q_file.dim * torch.finfo(dtype).bits // 8))
    for qs in range(0, num_q, chunk):
        qe = min(num_q, qs + chunk)
        q_local = q_file.read(qs, qe, device, dtype)  # (nq, L, D)
        pairs_g = top[qs:qe].reshape(-1)  # gallery index of every (query, rank) pair of the chunk
        order = torch.argsort(pairs_g)
        sorted_g = pairs_g[order]
        bounds = torch.searchsorted(sorted_g, torch.arange(0, num_g + gallery_block, gallery_block, device=device))
        flat = rescored[qs:qe].view(-1)
        for b, gs in enumerate(range(0, num_g, gallery_block)):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            if lo == hi:
                continue  # no query of this chunk ranked these gallery images in its top k
            g_block = g_file.read(gs, min(num_g, gs + gallery_block), device, dtype)
            idx = order[lo:hi]  # positions in the chunk's (query, rank) pairs
            qi, gi = idx // k, sorted_g[lo:hi] - gs
            for s in range(0, len(idx), 64):  # 64 pairs at a time: bounded copies and similarities
                sl = slice(s, s + 64)
                flat[idx[sl]] = local_distance(
                    q_local[qi[sl]], q_heat[qs:qe][qi[sl]].to(dtype), g_block[gi[sl]]
                ).float()
        del q_local
    out = dist.add_(_OUTSIDE)  # in place: every pair not re-scored ranks after the re-scored ones
    rows = torch.arange(num_q, device=device)[:, None].expand(-1, k)
    mixed = (1.0 - global_weight) * rescored + global_weight * (out[rows, top] - _OUTSIDE)
    out[rows, top] = mixed.clamp_(min=0.0)
    return out


def dense_spatial_distance(
    q_global: torch.Tensor,
    g_global: torch.Tensor,
    q_heat: torch.Tensor,
    q_local: torch.Tensor,
    g_local: torch.Tensor,
    *,
    topk: int = DEFAULT_TOPK,
    global_weight: float = DEFAULT_GLOBAL_WEIGHT,
) -> torch.Tensor:
    """The same distances computed the naive way, every pair matched in memory: the reference
    :func:`topk_spatial_distance` is tested and benchmarked against (small sizes only)."""
    d_global = (1.0 - q_global @ g_global.T).clamp_(min=0.0)
    sims = torch.einsum("qld,gmd->qglm", q_local, g_local).amax(dim=3)  # (Nq, Ng, L)
    d_local = 1.0 - (sims * q_heat[:, None, :]).sum(dim=2)
    k = min(topk, g_global.shape[0])
    top = torch.topk(d_global, k, dim=1, largest=False).indices
    out = d_global + _OUTSIDE
    rows = torch.arange(q_global.shape[0])[:, None]
    out[rows, top] = ((1.0 - global_weight) * d_local[rows, top] + global_weight * d_global[rows, top]).clamp(min=0.0)
    return out
