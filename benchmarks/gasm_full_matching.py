"""Time and memory of GASM's full-resolution matching (methods/gasm_matching.py) at Market-1501 size,
against a naive dense computation in the same run.

    python benchmarks/gasm_full_matching.py                       # 3368 x 15913, 24x8 x 2048, top 30
    python benchmarks/gasm_full_matching.py --scale 0.05          # a quick run
    python benchmarks/gasm_full_matching.py --dtype bfloat16      # similarities in bfloat16

Each measurement runs in a fresh subprocess (peak RSS = ``ru_maxrss``, Python and torch included):

* ``dense``  -- the reference: every pair matched in memory (``dense_spatial_distance``) at a size whose
  (Nq, Ng, L, L) similarities fit (``--dense-size``, 24 x 120 by default), then the same size through
  ``topk_spatial_distance``: the time ratio and the largest difference of the two distance matrices;
* ``topk``   -- Market-1501 size: local features written to float16 files in ``--dir`` block by block
  (as extraction would write them; the write is timed apart), then the top-k distances and the
  metrics (harness.eval.metrics.evaluate). The features are random (identity centres + noise, as in
  benchmarks/gasm_matching.py) so mAP means nothing beyond a sanity check.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIZES = {"market": (3368, 15913, 750)}
GRID = (24, 8)  # 384 x 128 at last stride 1


def labels(num_q: int, num_g: int, ids: int, rng):
    q_pids = rng.integers(1, ids + 1, num_q)
    g_pids = rng.integers(1, ids + 1, num_g)
    return q_pids, g_pids, rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)


_NOISE: dict[tuple, torch.Tensor] = {}


def features(pids, dim: int, n_loc: int, gen, centres, parts, start: int, stop: int):
    """Global features, local features and heatmaps of images start..stop. The local noise comes from
    a bank of 64 draws, each image taking one rolled along the channels by a random amount: drawing
    7.6 billion normal numbers at Market-1501 size would take longer than the matching."""
    p = torch.from_numpy(pids[start:stop])
    n = len(p)
    bank = _NOISE.setdefault((n_loc, dim), torch.randn(64, n_loc, dim, generator=gen))
    pick, roll = torch.randint(0, 64, (n,), generator=gen), torch.randint(0, dim, (n,), generator=gen)
    noise = torch.stack([torch.roll(bank[int(b)], int(r), dims=1) for b, r in zip(pick, roll)])
    glob = F.normalize(0.4 * centres[p] + torch.randn(n, dim, generator=gen), dim=1)
    local = F.normalize(0.3 * parts[p] + noise, dim=2)
    heat = torch.rand(n, n_loc, generator=gen)
    return glob, local, heat / heat.sum(dim=1, keepdim=True)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def child_dense(args) -> dict:
    from methods.gasm_matching import SpatialFile, dense_spatial_distance, topk_spatial_distance

    num_q, num_g = (int(n) for n in args.dense_size.split("x"))
    n_loc, gen, rng = GRID[0] * GRID[1], torch.Generator().manual_seed(1), np.random.default_rng(1)
    q_pids, g_pids, *_ = labels(num_q, num_g, 50, rng)
    centres, parts = torch.randn(51, args.dim, generator=gen), torch.randn(51, n_loc, args.dim, generator=gen)
    qg, ql, qh = features(q_pids, args.dim, n_loc, gen, centres, parts, 0, num_q)
    gg, gl, _ = features(g_pids, args.dim, n_loc, gen, centres, parts, 0, num_g)
    ql, gl = ql.half().float(), gl.half().float()  # what the files hold
    start = time.perf_counter()
    want = dense_spatial_distance(qg, gg, qh, ql, gl, topk=args.topk)
    dense_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        qf, gf = (
            SpatialFile(Path(tmp) / "q", num_q, n_loc, args.dim),
            SpatialFile(Path(tmp) / "g", num_g, n_loc, args.dim),
        )
        qf.write(0, ql), gf.write(0, gl)
        start = time.perf_counter()
        got = topk_spatial_distance(qg, gg, qh, qf, gf, topk=args.topk, dtype=getattr(torch, args.dtype))
        topk_s = time.perf_counter() - start
    return {"pairs": f"{num_q}x{num_g}", "dense_s": dense_s, "topk_s": topk_s,
            "max_diff": float((got - want).abs().max()), "peak_gb": peak_gb()}  # fmt: skip


def child_topk(args) -> dict:
    from harness.eval.metrics import evaluate
    from methods.gasm_matching import SpatialFile, topk_spatial_distance

    num_q, num_g, ids = (max(1, int(x * args.scale)) for x in SIZES["market"])
    n_loc, gen, rng = GRID[0] * GRID[1], torch.Generator().manual_seed(0), np.random.default_rng(0)
    q_pids, g_pids, q_cams, g_cams = labels(num_q, num_g, ids, rng)
    centres, parts = torch.randn(ids + 1, args.dim, generator=gen), torch.randn(ids + 1, n_loc, args.dim, generator=gen)
    tmp = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        files, globals_, heats, write_s = [], [], [], 0.0
        for name, pids in (("query", q_pids), ("gallery", g_pids)):
            f = SpatialFile(tmp / name, len(pids), n_loc, args.dim)
            gs, hs = [], []
            for s in range(0, len(pids), 256):
                g, local, h = features(pids, args.dim, n_loc, gen, centres, parts, s, min(len(pids), s + 256))
                t = time.perf_counter()
                f.write(s, local)
                write_s += time.perf_counter() - t
                gs.append(g), hs.append(h)
            files.append(f), globals_.append(torch.cat(gs)), heats.append(torch.cat(hs))
        del local
        before = peak_gb()
        start = time.perf_counter()
        dist = topk_spatial_distance(
            globals_[0], globals_[1], heats[0], *files, topk=args.topk, dtype=getattr(torch, args.dtype)
        )
        match_s = time.perf_counter() - start
        result = evaluate(dist.numpy(), q_pids, g_pids, q_cams, g_cams)
        total_s = time.perf_counter() - start
        file_gb = sum(f.path.stat().st_size for f in files) / 1e9
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"queries": num_q, "gallery": num_g, "write_s": write_s, "match_s": match_s, "total_s": total_s,
            "file_gb": file_gb, "before_gb": before, "peak_gb": peak_gb(), "mAP": result["mAP"],
            "rank1": result["rank1"]}  # fmt: skip


def run_child(task: str, argv: list[str]) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--child", task, *argv], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"  {task}: failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply Market-1501's image counts")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--topk", type=int, default=30)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--dense-size", default="24x120", help="queries x gallery of the dense reference")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the feature files go")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = child_dense(args) if args.child == "dense" else child_topk(args)
        print("RESULT " + json.dumps(out), flush=True)
        return
    argv = [a for a in sys.argv[1:]]
    print(
        f"GASM full-resolution matching: grid {GRID[0]}x{GRID[1]}, {args.dim}-d, top {args.topk}, similarities in "
        f"{args.dtype}, CPU ({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    d = run_child("dense", argv)
    if d:
        print(
            f"  reference at {d['pairs']}: dense {d['dense_s']:.2f} s, top-k on files {d['topk_s']:.2f} s "
            f"(ratio dense/top-k {d['dense_s'] / d['topk_s']:.1f}x), max |difference| {d['max_diff']:.1e}",
            flush=True,
        )
    t = run_child("topk", argv)
    if t:
        pairs = t["queries"] * min(args.topk, t["gallery"])
        gflop = 2 * pairs * (GRID[0] * GRID[1]) ** 2 * args.dim / 1e9
        print(
            f"  {t['queries']} x {t['gallery']}: features written {t['write_s']:.1f} s ({t['file_gb']:.1f} GB of "
            f"float16 files); top-k matching {t['match_s']:.1f} s ({gflop:.0f} GFLOP, {gflop / t['match_s']:.0f} "
            f"GFLOP/s), with the metrics {t['total_s']:.1f} s; peak RSS {t['peak_gb']:.2f} GB (before matching "
            f"{t['before_gb']:.2f} GB); mAP {t['mAP']:.4f} rank-1 {t['rank1']:.4f} (random features)",
            flush=True,
        )
        if d:
            dense_per_pair = d["dense_s"] / np.prod([int(n) for n in d["pairs"].split("x")])
            all_pairs = dense_per_pair * t["queries"] * t["gallery"]
            print(
                f"  the dense reference at this size: {all_pairs / 3600:.0f} h by its per-pair time and "
                f"{t['queries'] * t['gallery'] * (GRID[0] * GRID[1]) ** 2 * 4 / 1e9:,.0f} GB of similarities "
                f"(ratio {all_pairs / t['total_s']:.0f}x)"
            )


if __name__ == "__main__":
    main()
