"""Reports, built from the store's rows only.

Here: the plain table of measured rows that `reidbench run` prints for its grid. The papers' tables
are in the modules beside it: `reference` (published numbers, package data) and `mapping` (which
store identity measures which published row), `tables` and `extras` (the format-free tables),
`render` and `html` (Markdown, LaTeX, CSV, HTML), `plots` (SVG pictures) and `build` (`reidbench report`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tabulate import tabulate

_HEADERS = [
    "cell",
    "method",
    "variant",
    "backbone",
    "train",
    "test",
    "data",
    "seed",
    "RR",
    "R1",
    "R5",
    "R10",
    "mAP",
    "mAP off.",
    "mINP",
    "iters",
    "img/s",
]


def results_table(rows: Iterable[dict[str, Any]], *, fmt: str = "github") -> str:
    """Measured results, one line per row, sorted by identity; metrics in percent."""
    ordered = sorted(
        rows,
        key=lambda r: (
            r["grid"],
            r["method"],
            r["variant"],
            r["backbone"],
            r["train_dataset"],
            r["test_dataset"],
            r["seed"],
            r["rerank"],
        ),
    )
    body = [
        [
            r["cell_id"],
            r["method"],
            r["variant"],
            r["backbone"],
            r["train_dataset"],
            r["test_dataset"],
            "synthetic" if r["synthetic"] else "real",
            r["seed"],
            "yes" if r["rerank"] else "no",
            *(
                "-" if r.get(m) is None else f"{100 * r[m]:.1f}"
                for m in ("rank1", "rank5", "rank10", "mAP", "mAP_official", "mINP")
            ),
            r["iterations"],
            "-" if r["train_images_per_second"] is None else f"{r['train_images_per_second']:.1f}",
        ]
        for r in ordered
    ]
    if fmt == "github":
        return _github(body, _HEADERS)
    return tabulate(body, headers=_HEADERS, tablefmt=fmt, disable_numparse=True)


def _github(body: list[list[Any]], headers: list[str]) -> str:
    """What tabulate(..., tablefmt="github", disable_numparse=True) writes (every column left-aligned),
    without its per-cell type inference: 0.4 s per 1,000 rows, minutes for a store of 100,000."""
    text = [[str(v) for v in row] for row in body]
    columns = list(zip(*text)) or [()] * len(headers)
    widths = [max([len(h) + 2, *map(len, c)]) for h, c in zip(headers, columns)]  # tabulate pads headers by 2
    line = ("| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |").format  # each cell left-aligned to its width
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(*headers), rule, *(line(*row) for row in text)])


def write_markdown(path: Path, title: str, rows: list[dict[str, Any]]) -> Path:
    synthetic = any(r["synthetic"] for r in rows)
    note = "\nRows marked `synthetic` were measured on generated data, not on the real dataset.\n" if synthetic else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# {title}\n\nMetrics in percent; R1/R5/R10 are CMC ranks, RR re-ranked; mAP is the mean precision "
        f"at each true match (torchreid, fast-reid), mAP off. the official Market-1501 code's AP.\n{note}\n"
        f"{results_table(rows)}\n"
    )
    return path
