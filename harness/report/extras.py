"""Tables the papers do not print: GPU throughput per method and backbone, and a train × test
matrix for every method (as GASM Table 3 does for one)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.report.tables import Measure, dataset_label, dataset_order, measure

_THROUGHPUT_HEADERS = (
    "method",
    "backbone",
    "device",
    "world size",
    "precision",
    "batch",
    "train img/s",
    "train img/s per device",
    "infer img/s",
    "peak memory (GiB)",
    "SM util. (%)",
    "power (W)",
    "source",
)


@dataclass(frozen=True)
class SimpleTable:
    """A plain table: a title, caption sentences, headers and rows of text."""

    title: str
    caption: tuple[str, ...]
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def device_label(p: dict[str, Any]) -> str:
    if p.get("gpu_model"):
        count = p.get("gpu_count") or p.get("world_size") or 1
        return f"{count} × {p['gpu_model']}"
    return "CPU" if (p.get("device") or "cpu").startswith("cpu") else f"{p.get('device')} (no GPU figures)"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def _profile_key(p: dict[str, Any]) -> tuple:
    return (
        p["method"] or "",
        p["variant"] or "",
        p["backbone"] or "",
        device_label(p),
        p["world_size"] or 0,
        p["precision"] or "",
        p["batch_size"] or 0,
        p["source"] or "",
        p["profile_id"] or "",
    )


def throughput_table(profiles: Iterable[dict[str, Any]]) -> SimpleTable:
    """One line per profile row: training and inference speed, memory, utilisation and power."""
    rows = []
    for p in sorted(profiles, key=_profile_key):
        memory = None if p["peak_memory_bytes"] is None else p["peak_memory_bytes"] / 2**30
        rows.append(
            (
                f"{p['method']}:{p['variant']}",
                p["backbone"],
                device_label(p),
                str(p["world_size"]),
                p["precision"] or "",
                str(p["batch_size"]),
                _num(p["train_images_per_second"]),
                _num(p["train_images_per_second_per_device"]),
                _num(p["infer_images_per_second"]),
                _num(memory, ".2f"),
                _num(p["sm_utilization"]),
                _num(p["power_watts"]),
                p["source"] or "",
            )
        )
    caption = [
        "Images per second with warm-up excluded; training over all devices and per device. "
        "Peak memory is torch's peak allocation (max over ranks); SM utilisation and power are NVML means "
        "over the measured steps. CPU runs have no GPU figures."
    ]
    if not rows:
        caption.append("The store holds no profile rows yet (profiling runs and training cells write them).")
    return SimpleTable("GPU throughput per method and backbone", tuple(caption), _THROUGHPUT_HEADERS, tuple(rows))


def cell_text(m: Measure | None, decimals: int = 1) -> str:
    if m is None:
        return "–"
    text = f"{m.mean:.{decimals}f}"
    if m.std is not None:
        text += f" ± {m.std:.{decimals}f} (n={m.n})"
    return text + (" syn" if m.synthetic else "")


def cross_domain_tables(rows: Iterable[dict[str, Any]]) -> list[SimpleTable]:
    """For every (method, variant, backbone): rank-1 / mAP for each training × test set, not re-ranked."""
    grouped: dict[tuple[str, str, str], dict[tuple[str, str], list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        if not r["rerank"]:
            grouped[r["method"], r["variant"], r["backbone"]][r["train_dataset"], r["test_dataset"]].append(r)
    tables = []
    for (method, variant, backbone), cells in sorted(grouped.items()):
        trains = sorted({t for t, _ in cells}, key=dataset_order)
        tests = sorted({t for _, t in cells}, key=dataset_order)
        body, synthetic = [], False
        for train in trains:
            line = [dataset_label(train)]
            for test in tests:
                found = cells.get((train, test), [])
                r1, _ = measure(found, "rank1")
                ap, _ = measure(found, "mAP")
                synthetic |= bool(r1 and r1.synthetic)
                line.append("" if r1 is None else f"{cell_text(r1)} / {cell_text(ap)}")
            body.append(tuple(line))
        caption = [
            "Rank-1 / mAP (%) of models trained on the row's dataset and tested on the column's, "
            "mean ± std over seeds (n) where there are several; no re-ranking."
        ]
        if synthetic:
            caption.append("'syn' marks numbers measured on SYNTHETIC data, not on the real dataset.")
        tables.append(
            SimpleTable(
                f"{method}:{variant} on {backbone}: train × test",
                tuple(caption),
                ("train \\ test", *(dataset_label(t) for t in tests)),
                tuple(body),
            )
        )
    return tables


def cmc_curves(rows: Iterable[dict[str, Any]], ranks: int = 50) -> dict[str, dict[str, list[float]]]:
    """Per test dataset, per model label: the mean CMC (percent) over seeds up to `ranks`, real data preferred."""
    grouped: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if not r["rerank"] and r.get("cmc"):
            grouped[r["test_dataset"], r["method"], r["variant"], r["backbone"], r["train_dataset"]].append(r)
    curves: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for (test, method, variant, backbone, train), found in sorted(grouped.items()):
        real = [r for r in found if not r["synthetic"]]
        chosen = real or found
        length = min(ranks, *(len(r["cmc"]) for r in chosen))
        # statistics.fmean of each rank (fsum, then / count), a column at a time: half the time
        mean = [100 * (math.fsum(column) / len(chosen)) for column in zip(*(r["cmc"][:length] for r in chosen))]
        label = f"{method}:{variant} {backbone}" + ("" if train == test else f" (trained on {dataset_label(train)})")
        curves[test][label + ("" if real else " [syn]")] = mean
    return {test: curves[test] for test in sorted(curves, key=dataset_order)}
