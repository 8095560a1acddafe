"""Time and memory of reidbench's evaluation engine against a textbook reference, in one run.

    python benchmarks/evaluation.py                        # every size, 2,000 images to MSMT17
    python benchmarks/evaluation.py --sizes market --scale 0.25   # a quick run
    python benchmarks/evaluation.py --sizes small2k,small6k --loaded  # with one busy process beside

For each size the same seeded random problem (2048-d features of identities seen
by 6 cameras, several true matches per query, distractors pid 0 and junk pid -1)
is scored four ways, each in a fresh subprocess:

* ``eval ours``  -- harness.eval.distance.pairwise_distance + harness.eval.metrics.evaluate;
* ``eval ref``   -- the textbook evaluation: the full float32 distance matrix, then
  per query a full argsort and the Market-1501 CMC/AP/INP (vectorised per query);
* ``rerank ours`` -- harness.eval.rerank.rerank_features (features -> re-ranked distances);
* ``rerank ref`` -- the textbook dense re-ranking (Zhong et al. 2017 as in the widely
  used reference code: the N x N matrix, full argsort, dense V, dense query expansion,
  inverted-index Jaccard), fed with the three distance matrices it computes itself.

Both sides start from the same features and include computing their distances.
Memory is the peak resident set size of the subprocess (``ru_maxrss``): it counts
everything the process held (Python, torch, the input features), so the line also
shows the RSS right before the timed part.  The reference is not run at MSMT17 size,
where its N x N matrices alone (93820^2 x 4 B = 35 GB each, several of them) cannot
fit; ``--reference-at`` changes that list.  The two sides' results are compared (mAP
and rank-1 difference, max |re-ranked distance difference|) as a sanity check.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

SIZES = {  # queries, gallery images, test identities, feature dimensions
    "small2k": (400, 1600, 100, 2048),
    "small6k": (1200, 4800, 300, 2048),
    "small6k-128d": (1200, 4800, 300, 128),
    "cuhk03": (1400, 5332, 700, 2048),
    "market": (3368, 15913, 750, 2048),
    "market-128d": (3368, 15913, 750, 128),
    "duke": (2228, 17661, 702, 2048),
    "msmt17": (11659, 82161, 3060, 2048),
}
DIM, CAMERAS = 2048, 6
TARGETS = (
    "Market eval <= 2 s; rerank <= 0.2x the reference's time at every size from 2,000 images to Market "
    "(2048-d and 128-d), quiet and --loaded; Market rerank <= 3 GB peak; MSMT17 rerank <= 60 s and 8 GB"
)


def make_problem(num_q: int, num_g: int, ids: int, seed: int = 0, dim: int = DIM):
    """Seeded features: identity centre (x0.3) + camera offset (x0.2) + unit noise.

    Gallery: 80% images of the test identities, 15% distractors (pid 0, each its own
    person) and 5% junk (pid -1); queries are images of the test identities.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids + 1, dim), dtype=np.float32)
    cam_offset = rng.standard_normal((CAMERAS, dim), dtype=np.float32)
    q_pids = rng.integers(1, ids + 1, num_q)
    g_pids = np.where(
        rng.random(num_g) < 0.8, rng.integers(1, ids + 1, num_g), np.where(rng.random(num_g) < 0.75, 0, -1)
    )
    q_cams, g_cams = rng.integers(0, CAMERAS, num_q), rng.integers(0, CAMERAS, num_g)

    def features(pids, cams):
        out = np.empty((len(pids), dim), dtype=np.float32)
        for s in range(0, len(pids), 4096):
            p, c = pids[s : s + 4096], cams[s : s + 4096]
            own = rng.standard_normal((len(p), dim), dtype=np.float32)  # distractors/junk: their own person
            centre = np.where((p > 0)[:, None], centres[np.maximum(p, 0)], own)
            out[s : s + 4096] = (
                0.3 * centre + 0.2 * cam_offset[c] + rng.standard_normal((len(p), dim), dtype=np.float32)
            )
        return out

    return (
        torch.from_numpy(features(q_pids, q_cams)),
        torch.from_numpy(features(g_pids, g_cams)),
        q_pids,
        g_pids,
        q_cams,
        g_cams,
    )


# --------------------------------------------------------------------------
# Textbook reference implementations
# --------------------------------------------------------------------------


def textbook_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d, 0))


def textbook_evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50) -> dict:
    aps, inps, cmcs = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i])
        match = g_pids[order] == q_pids[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])) & (g_pids[order] != -1)
        hits = match[keep]
        if not hits.any():
            continue
        cum = hits.cumsum()
        positions = np.nonzero(hits)[0]
        aps.append((cum[positions] / (positions + 1)).mean())
        inps.append(cum[-1] / (positions[-1] + 1))
        cmc = np.zeros(max_rank)
        if positions[0] < max_rank:
            cmc[positions[0] :] = 1
        cmcs.append(cmc)
    cmc = np.mean(cmcs, axis=0)
    return {"mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)), "rank1": float(cmc[0])}


def textbook_evaluate_python(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50) -> dict:
    """The public toolkits' pure-Python evaluator, as commonly written: the AP via a list comprehension."""
    aps, cmcs = [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i])
        matches = (g_pids[order] == q_pids[i]).astype(np.int32)
        remove = ((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])) | (g_pids[order] == -1)
        raw = matches[~remove]
        if not np.any(raw):
            continue
        cmc = raw.cumsum()
        cmc[cmc > 1] = 1
        cmcs.append(cmc[:max_rank])
        cum = raw.cumsum()
        precision = [x / (j + 1.0) for j, x in enumerate(cum)]
        aps.append((np.asarray(precision) * raw).sum() / raw.sum())
    return {"mAP": float(np.mean(aps)), "mINP": float("nan"), "rank1": float(np.mean([c[0] for c in cmcs]))}


def textbook_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3) -> np.ndarray:
    num_q, n = q_g.shape[0], q_g.shape[0] + q_g.shape[1]
    original = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    del q_q, g_g
    original = np.power(original, 2).astype(np.float32)
    original = np.transpose(original / np.max(original, axis=0))
    V = np.zeros_like(original, dtype=np.float32)
    rank = np.argsort(original).astype(np.int32)
    half = int(np.around(k1 / 2.0))

    def k_recip(i, k):
        forward = rank[i, : k + 1]  # noqa: F821 (defined above; ruff reads the later `del rank`)
        return forward[np.where(rank[forward, : k + 1] == i)[0]]  # noqa: F821

    for i in range(n):
        r = k_recip(i, k1)
        expansion = r
        for c in r:
            rc = k_recip(c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        w = np.exp(-original[i, expansion])
        V[i, expansion] = w / np.sum(w)
    original = original[:num_q]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(n):
            V_qe[i] = np.mean(V[rank[i, :k2]], axis=0)
        V = V_qe
        del V_qe
    del rank
    inverted = [np.where(V[:, i] != 0)[0] for i in range(n)]
    jaccard = np.zeros_like(original, dtype=np.float32)
    for i in range(num_q):
        total = np.zeros(n, dtype=np.float32)
        nonzero = np.where(V[i] != 0)[0]
        for k in nonzero:
            total[inverted[k]] += np.minimum(V[i, k], V[inverted[k], k])
        jaccard[i] = 1 - total / (2.0 - total)
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:, num_q:]


# --------------------------------------------------------------------------
# One measurement per subprocess
# --------------------------------------------------------------------------


def child(task: str, size: str, scale: float, device: str, out_path: str) -> None:
    from harness.eval.distance import pairwise_distance
    from harness.eval.metrics import evaluate
    from harness.eval.rerank import rerank_features

    num_q, num_g, ids = (max(1, int(x * scale)) for x in SIZES[size][:3])
    q, g, q_pids, g_pids, q_cams, g_cams = make_problem(num_q, num_g, ids, dim=SIZES[size][3])
    labels = (q_pids, g_pids, q_cams, g_cams)
    if device == "cuda":
        q, g = q.cuda(), g.cuda()
        torch.cuda.synchronize()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict = {}
    start = time.perf_counter()
    if task == "eval ours":
        result = evaluate(pairwise_distance(q, g), *labels)
    elif task == "eval ref":
        qn, gn = q.cpu().numpy(), g.cpu().numpy()
        result = textbook_evaluate(textbook_distances(qn, gn), *labels)
    elif task == "eval ref-py":
        qn, gn = q.cpu().numpy(), g.cpu().numpy()
        result = textbook_evaluate_python(textbook_distances(qn, gn), *labels)
    elif task == "rerank ours":
        dist = rerank_features(q, g)
    elif task == "rerank fp32":  # the float32 candidate pass, for its time (the result is the same)
        dist = rerank_features(q, g, precision="float32")
    elif task == "rerank bf16":
        dist = rerank_features(q, g, precision="bfloat16")
    elif task == "rerank ref":
        qn, gn = q.cpu().numpy(), g.cpu().numpy()
        mats = (textbook_distances(qn, gn), textbook_distances(qn, qn), textbook_distances(gn, gn))
        dist = textbook_rerank(*mats)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    check = {}
    if task == "rerank ref":  # untimed: our matrix entry point on the very same three matrices
        from harness.eval.rerank import rerank

        check["matrix_api_max_diff"] = float(np.abs(rerank(*mats) - dist).max())
    if task.startswith("rerank"):
        if task != "rerank ref":
            from harness.eval.neighbours import resolve_precision

            precision = {"rerank fp32": "float32", "rerank bf16": "bfloat16"}.get(task, "auto")
            check["precision"] = resolve_precision(precision, torch.empty(num_q + num_g, q.shape[1], device=q.device))
        np.save(out_path, dist)
        result = evaluate(dist, *labels)
    summary = {
        "seconds": seconds,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "before_gb": rss_before / 1e6,
        "mAP": result["mAP"],
        "rank1": result["rank1"],
        **check,
    }
    if device == "cuda":
        summary["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    print("RESULT " + json.dumps(summary), flush=True)


def run_child(task: str, size: str, scale: float, device: str, out_path: str, loaded: bool = False) -> dict | None:
    """One measurement in a fresh process; with ``loaded``, one busy process (a pure-Python spin
    loop) runs beside it for its whole life, as data-loading workers do on a cluster node."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    try:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                task,
                "--sizes",
                size,
                "--scale",
                str(scale),
                "--device",
                device,
                "--out",
                out_path,
            ],
            capture_output=True,
            text=True,
        )
    finally:
        if busy:
            busy.kill()
            busy.wait()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"  {task}: failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count (e.g. 0.25 for a quick run)")
    parser.add_argument(
        "--reference-at",
        default=",".join(s for s in SIZES if s != "msmt17"),
        help="sizes at which the textbook reference also runs",
    )
    parser.add_argument(
        "--loaded", action="store_true", help="run one busy process beside every measurement (shared cores)"
    )
    parser.add_argument(
        "--tasks",
        default="eval ours,eval ref,eval ref-py,rerank ours,rerank ref",
        help="comma-separated, of: eval ours, eval ref, eval ref-py, rerank ours, rerank ref, rerank fp32, rerank bf16",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.sizes, args.scale, args.device, args.out)

    print(
        f"reidbench evaluation benchmark: {CAMERAS} cameras, scale {args.scale}, device {args.device}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}"
    )
    print(
        f"mode: {'loaded (one busy process beside every measurement)' if args.loaded else 'as the machine is'}; "
        f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other users' processes included)"
    )
    print(f"targets: {TARGETS}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            num_q, num_g, ids = (max(1, int(x * args.scale)) for x in SIZES[size][:3])
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(
                f"\n{size}: {num_q} queries x {num_g} gallery ({ids} identities), {SIZES[size][3]}-d; load average {load}",
                flush=True,
            )
            with_ref = size in args.reference_at.split(",")
            figures = {}
            for task in args.tasks.split(","):
                if " ref" in task and not with_ref:
                    print(
                        f"  {task:12s} not run at this size (not in --reference-at: its dense N x N matrices would not fit in memory)"
                    )
                    continue
                figures[task] = r = run_child(
                    task, size, args.scale, args.device, os.path.join(tmp, task.replace(" ", "_") + ".npy"), args.loaded
                )
                if r:
                    gpu = f", GPU peak {r['gpu_peak_gb']:.2f} GB" if "gpu_peak_gb" in r else ""
                    note = f" [{r['precision']} candidate pass]" if "precision" in r else ""
                    print(
                        f"  {task:12s} {r['seconds']:8.2f} s   peak RSS {r['peak_gb']:6.2f} GB (before timing {r['before_gb']:.2f} GB){gpu}"
                        f"   mAP {r['mAP']:.4f} rank-1 {r['rank1']:.4f}{note}",
                        flush=True,
                    )
            for kind, ref_task in (("eval", "eval ref"), ("eval", "eval ref-py"), ("rerank", "rerank ref")):
                ours, ref = figures.get(f"{kind} ours"), figures.get(ref_task)
                if ours and ref:
                    extra = ""
                    if kind == "rerank":
                        diff = np.abs(
                            np.load(os.path.join(tmp, "rerank_ours.npy")) - np.load(os.path.join(tmp, "rerank_ref.npy"))
                        )
                        off = diff > 1e-4
                        extra = (
                            f"; features entry vs reference: max |distance difference| {diff.max():.2e}, "
                            f"{int(off.sum())} entries in {int(off.any(axis=1).sum())} query rows differ by > 1e-4; "
                            f"matrix entry on the reference's own matrices: max |difference| {ref['matrix_api_max_diff']:.2e}"
                        )
                    print(
                        f"  {kind}: ours/{ref_task} time {ours['seconds'] / ref['seconds']:.3f} (ref/ours {ref['seconds'] / ours['seconds']:.1f}x), "
                        f"peak RSS ours/ref {ours['peak_gb'] / ref['peak_gb']:.3f}; |mAP diff| {abs(ours['mAP'] - ref['mAP']):.2e}, "
                        f"|rank-1 diff| {abs(ours['rank1'] - ref['rank1']):.2e}{extra}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
