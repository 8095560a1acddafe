"""Time and memory of GASM's guided adaptive spatial matching against plain Euclidean evaluation,
at Market-1501 size on random features, in one run.

    python benchmarks/gasm_matching.py                    # 3368 x 15913, 2048-d, 6x2 matching grid
    python benchmarks/gasm_matching.py --grid 3x2 --scale 0.25   # a quick run

Each measurement runs in a fresh subprocess, from the same seeded features:

* ``euclidean`` -- what every method without its own distance gets: harness.eval.distance.pairwise_distance
  (Euclidean) on the global features, then harness.eval.metrics.evaluate;
* ``gasm``      -- the same call with GASM's batched distance as the metric (the hook a model's
  ``distance`` goes through), on packed rows ``[global | L local features | heatmap]`` of
  ``D (L + 1) + L`` floats, then evaluate.

The features: identity centres plus camera offsets plus noise, as in benchmarks/evaluation.py; each
identity also has L local centres that every one of its images shows at locations shifted by a
random vertical offset (misalignment), and each image's heatmap is random. Time counts the
distances and the metrics. Memory is the subprocess's peak resident set (``ru_maxrss``), which
includes Python, torch and the features themselves; the RSS before timing is shown too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

SIZES = {"market": (3368, 15913, 750)}  # queries, gallery images, test identities
CAMERAS = 6


def make_problem(
    num_q: int, num_g: int, ids: int, dim: int, grid: tuple[int, int], *, global_only: bool = False, seed: int = 0
):
    """Packed GASM rows for queries and gallery (or, from the same draws, only their global features:
    what a plain method stores), and their labels (pid 0: distractors, -1: junk)."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_loc = grid[0] * grid[1]
    q_pids = rng.integers(1, ids + 1, num_q)
    g_pids = np.where(
        rng.random(num_g) < 0.8, rng.integers(1, ids + 1, num_g), np.where(rng.random(num_g) < 0.75, 0, -1)
    )
    q_cams, g_cams = rng.integers(0, CAMERAS, num_q), rng.integers(0, CAMERAS, num_g)
    centres = torch.randn(ids + 1, dim, generator=gen)
    parts = torch.randn(ids + 1, n_loc, dim, generator=gen)
    cam_offset = torch.randn(CAMERAS, dim, generator=gen)

    def rows(pids, cams):
        out = torch.empty(len(pids), dim if global_only else dim * (n_loc + 1) + n_loc)
        for s in range(0, len(pids), 1024):
            p, c = torch.from_numpy(np.maximum(pids[s : s + 1024], 0)), torch.from_numpy(cams[s : s + 1024])
            n = len(p)
            own = (p == 0)[:, None]  # distractors and junk: each its own person
            glob = 0.3 * torch.where(own, torch.randn(n, dim, generator=gen), centres[p]) + 0.2 * cam_offset[c]
            glob += torch.randn(n, dim, generator=gen)
            local = parts[p].view(n, grid[0], grid[1], dim)
            shift = int(torch.randint(0, grid[0], (), generator=gen))
            local = torch.roll(local, shift, dims=1).reshape(n, n_loc, dim) * 0.15 + torch.randn(
                n, n_loc, dim, generator=gen
            )
            heat = torch.rand(n, n_loc, generator=gen)
            packed = torch.cat(
                [F.normalize(glob, dim=1), F.normalize(local, dim=2).flatten(1), heat / heat.sum(dim=1, keepdim=True)],
                dim=1,
            )
            out[s : s + n] = packed[:, : out.shape[1]]
        return out

    return rows(q_pids, q_cams), rows(g_pids, g_cams), (q_pids, g_pids, q_cams, g_cams)


def child(task: str, size: str, scale: float, dim: int, grid: tuple[int, int]) -> None:
    from harness.eval.distance import pairwise_distance
    from harness.eval.metrics import evaluate
    from methods.gasm import gasm_distance, unpack

    num_q, num_g, ids = (max(1, int(x * scale)) for x in SIZES[size])
    q, g, labels = make_problem(num_q, num_g, ids, dim, grid, global_only=task == "euclidean")
    n_loc = grid[0] * grid[1]
    if task == "euclidean":
        metric = "euclidean"
    else:
        metric = lambda a, b: gasm_distance(*unpack(a, dim, n_loc), *unpack(b, dim, n_loc))  # noqa: E731
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = evaluate(pairwise_distance(q, g, metric=metric), *labels)
    seconds = time.perf_counter() - start
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                "before_gb": rss_before / 1e6,
                "features_gb": (q.numel() + g.numel()) * 4 / 1e9,
                "mAP": result["mAP"],
                "rank1": result["rank1"],
            }
        ),
        flush=True,
    )


def run_child(task: str, args) -> dict | None:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            task,
            "--sizes",
            args.sizes,
            "--scale",
            str(args.scale),
            "--dim",
            str(args.dim),
            "--grid",
            args.grid,
        ],
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"  {task}: failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="market", choices=list(SIZES))
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the image counts (e.g. 0.25 for a quick run)"
    )
    parser.add_argument("--dim", type=int, default=2048, help="feature channels (2048: ResNet-50)")
    parser.add_argument("--grid", default="6x2", help="matching grid, rows x columns (GASM's default 6x2)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    grid = tuple(int(n) for n in args.grid.split("x"))
    if args.child:
        return child(args.child, args.sizes, args.scale, args.dim, grid)

    num_q, num_g, ids = (max(1, int(x * args.scale)) for x in SIZES[args.sizes])
    n_loc = grid[0] * grid[1]
    print(
        f"GASM matching benchmark: {num_q} queries x {num_g} gallery ({ids} identities), {args.dim}-d features, "
        f"{args.grid} matching grid ({n_loc} locations, {args.dim * (n_loc + 1) + n_loc} floats per image), CPU, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}",
        flush=True,
    )
    figures = {}
    for task in ("euclidean", "gasm"):
        figures[task] = r = run_child(task, args)
        if r:
            print(
                f"  {task:9s} {r['seconds']:8.2f} s   peak RSS {r['peak_gb']:6.2f} GB (before timing {r['before_gb']:.2f} GB, "
                f"features {r['features_gb']:.2f} GB)   mAP {r['mAP']:.4f} rank-1 {r['rank1']:.4f}",
                flush=True,
            )
    if figures["euclidean"] and figures["gasm"]:
        e, gm = figures["euclidean"], figures["gasm"]
        gflop = 2 * num_q * num_g * n_loc**2 * args.dim / 1e9
        print(f"  gasm: {gflop:.0f} GFLOP of location similarities, {gflop / gm['seconds']:.0f} GFLOP/s overall")
        print(
            f"  gasm/euclidean: time {gm['seconds'] / e['seconds']:.1f}x, peak RSS {gm['peak_gb'] / e['peak_gb']:.2f}x, "
            f"extra RSS while timing: euclidean {e['peak_gb'] - e['before_gb']:.2f} GB, gasm {gm['peak_gb'] - gm['before_gb']:.2f} GB"
        )


if __name__ == "__main__":
    main()
