"""CMC curves and throughput bars as PNG, headless (Agg) and byte-for-byte reproducible: no
timestamp or software version in the file, a fixed hash salt, a fixed size and font."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, and the same output everywhere

import matplotlib.pyplot as plt  # noqa: E402

from harness.report.extras import SimpleTable  # noqa: E402
from harness.report.tables import dataset_label  # noqa: E402

_STYLE = {
    "svg.hashsalt": "reidbench",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "figure.dpi": 100,
    "axes.prop_cycle": matplotlib.cycler(
        color=[
            "#1f77b4",
            "#d62728",
            "#2ca02c",
            "#9467bd",
            "#ff7f0e",
            "#8c564b",
            "#e377c2",
            "#7f7f7f",
            "#bcbd22",
            "#17becf",
        ]
    ),
}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})  # no version string: same bytes on every run
    plt.close(fig)
    return path


def cmc_plot(path: Path, test_dataset: str, curves: dict[str, list[float]]) -> Path:
    """One line per model: matching rate (%) at ranks 1..50 on one test dataset."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for label, values in sorted(curves.items()):
            ax.plot(range(1, len(values) + 1), values, label=label, linewidth=1.5)
        ax.set_xlabel("rank")
        ax.set_ylabel("matching rate (%)")
        ax.set_title(f"CMC on {dataset_label(test_dataset)}")
        ax.set_xlim(1, 50)
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        return _save(fig, path)


def throughput_plot(path: Path, table: SimpleTable) -> Path | None:
    """Horizontal bars of training and inference images per second, one pair per profile row."""
    head = table.headers
    labels, train, infer = [], [], []
    for row in table.rows:
        cells = dict(zip(head, row))
        labels.append(
            f"{cells['method']} {cells['backbone']}\n{cells['device']}, ws {cells['world size']}, {cells['precision']}"
        )
        train.append(_value(cells["train img/s"]))
        infer.append(_value(cells["infer img/s"]))
    if not labels:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 1.0 + 0.55 * len(labels)))
        positions = range(len(labels))
        ax.barh([p + 0.2 for p in positions], train, height=0.4, label="training img/s (all devices)")
        ax.barh([p - 0.2 for p in positions], infer, height=0.4, label="inference img/s")
        ax.set_yticks(list(positions), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("images per second")
        ax.set_title("Throughput per method and backbone")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        return _save(fig, path)


_NOT_LOSSES = ("step", "lr", "phase", "images_per_second")  # the other keys of a metrics.jsonl line are loss terms


def curve_plot(path: Path, title: str, records: list[dict]) -> Path:
    """A cell's training curve: each loss term and the total (left), the learning rate (right), per step."""
    with plt.rc_context(_STYLE):
        fig, (losses, rates) = plt.subplots(1, 2, figsize=(8.0, 2.8))
        steps = [r["step"] for r in records]
        terms = sorted({k for r in records for k in r if k not in _NOT_LOSSES})
        losses.plot(steps, [sum(r.get(k, 0.0) for k in terms) for r in records], label="loss", linewidth=1.2)
        for key in terms:
            losses.plot(steps, [r.get(key) for r in records], label=key, linewidth=1.2)
        losses.set_xlabel("step")
        losses.set_ylabel("loss")
        losses.grid(True, alpha=0.3)
        losses.legend(fontsize=7)
        rates.plot(steps, [r.get("lr") for r in records], color="#2ca02c", linewidth=1.2)
        rates.set_xlabel("step")
        rates.set_ylabel("learning rate")
        rates.grid(True, alpha=0.3)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        return _save(fig, path)


def _value(text: str) -> float:
    return 0.0 if text in ("", "–") else float(text)
