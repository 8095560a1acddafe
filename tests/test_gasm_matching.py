"""GASM's full-resolution matching: top-k re-scoring with local features on disk (methods/gasm_matching.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.gasm import gasm_distance
from methods.gasm_matching import SpatialFile, dense_spatial_distance, topk_spatial_distance


def problem(num_q=7, num_g=40, locations=12, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q_global = F.normalize(torch.randn(num_q, dim, generator=gen), dim=1)
    g_global = F.normalize(torch.randn(num_g, dim, generator=gen), dim=1)
    # stored in float16: the reference sees the same rounded values
    q_local = F.normalize(torch.randn(num_q, locations, dim, generator=gen), dim=2).half().float()
    g_local = F.normalize(torch.randn(num_g, locations, dim, generator=gen), dim=2).half().float()
    heat = torch.rand(num_q, locations, generator=gen)
    return q_global, g_global, heat / heat.sum(dim=1, keepdim=True), q_local, g_local


def files(tmp_path, q_local, g_local, block=3):
    out = []
    for name, local in (("q", q_local), ("g", g_local)):
        f = SpatialFile(tmp_path / f"{name}.f16", *local.shape)
        for s in range(0, len(local), block):  # written block by block, as extraction does
            f.write(s, local[s : s + block])
        out.append(f)
    return out


def test_the_file_holds_what_was_written(tmp_path):
    *_, q_local, g_local = problem()
    q_file, g_file = files(tmp_path, q_local, g_local)
    assert torch.equal(g_file.read(5, 17), g_local[5:17]) and torch.equal(q_file.read(0, 7), q_local)
    assert (tmp_path / "g.f16").stat().st_size == 40 * 12 * 16 * 2


def test_blocked_topk_matching_equals_the_dense_reference(tmp_path):
    q_global, g_global, heat, q_local, g_local = problem()
    q_file, g_file = files(tmp_path, q_local, g_local)
    # chunks of 2 queries, gallery blocks of 8: every path of the loops runs
    got = topk_spatial_distance(
        q_global, g_global, heat, q_file, g_file, topk=5, memory=2 * 12 * 16 * 4, gallery_block=8
    )
    want = dense_spatial_distance(q_global, g_global, heat, q_local, g_local, topk=5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_only_each_querys_topk_is_rescored_and_the_rest_follows_in_global_order(tmp_path):
    q_global, g_global, heat, q_local, g_local = problem()
    q_file, g_file = files(tmp_path, q_local, g_local)
    got = topk_spatial_distance(q_global, g_global, heat, q_file, g_file, topk=5)
    d_global = 1.0 - q_global @ g_global.T
    for q in range(len(got)):
        top = set(torch.topk(d_global[q], 5, largest=False).indices.tolist())
        ranked = torch.argsort(got[q]).tolist()
        assert set(ranked[:5]) == top  # the re-scored ones first ...
        rest = ranked[5:]
        assert rest == sorted(rest, key=lambda g: float(d_global[q, g]))  # ... then the global order


def test_with_every_gallery_image_rescored_it_is_the_papers_average_of_eq4_and_global(tmp_path):
    """topk = all and weight 0.5 is gasm_distance's ``(d_global + d_GASM) / 2`` on every pair."""
    q_global, g_global, heat, q_local, g_local = problem()
    q_file, g_file = files(tmp_path, q_local, g_local)
    got = topk_spatial_distance(q_global, g_global, heat, q_file, g_file, topk=40, global_weight=0.5)
    want = gasm_distance(q_global, q_local, heat, g_global, g_local)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
