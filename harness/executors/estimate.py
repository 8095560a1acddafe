"""GPU-hours of a grid before it is submitted (`reidbench run SPEC --executor slurm --dry-run`).

A cell's training is its steps times its P x K batch, phase by phase at each phase's input size
(harness/engine/schedule.py); epochs (in the recipe's epoch_unit) are counted at the published size
of each real training set
(harness/data/published.py), since a GPU run is a run on the real data (the synthetic stand-ins
train in seconds). The training rate, in images per second per GPU, comes from the first of:

1. the store's GPU profile rows of the same method, variant and backbone (`reidbench profile
   --device cuda`, or the profile rows that training cells write), scaled to the cell's input size;
2. the GPU profile rows committed with reidbench (its own results/profiles/), likewise;
3. a per-backbone prior (gpu_prior.csv beside this file): NVIDIA's published single-A100-80GB
   mixed-precision training rate of ResNet-50 v1.5, 2470 images/s at 224 x 224
   (DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5, pytorch-21.03 NGC),
   scaled by each backbone's multiply-adds per image (torchvision's and timm's model cards) and by
   the input size. It ignores method heads and last stride 1, so it is good to a factor of two;
   profile rows replace it as soon as a GPU has measured them.

The output says which source each cell's rate came from. GPU-hours assume linear DDP scaling;
evaluation and start-up are not counted, except in the implied --time (10% and 10 minutes more).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.data.published import PUBLISHED
from harness.data.sampler import epoch_steps
from harness.data.union import members
from harness.engine import schedule
from harness.spec import Cell, Resources, SlurmConfig
from harness.splits import split_of
from harness.store import Store

PRIOR_FILE = Path(__file__).with_name("gpu_prior.csv")
REFERENCE = ("resnet50", 2470.0, (224, 224))  # images/s, one A100 80GB, mixed precision (see the module's docstring)
SHIPPED = Path(__file__).resolve().parents[2] / "results"  # the profile rows committed with reidbench


@dataclass(frozen=True)
class Rate:
    images_per_second: float  # per GPU, at `pixels` per image
    pixels: int
    source: str  # "store", "shipped" or "prior"
    device: str

    def at(self, size: tuple[int, int]) -> float:
        return self.images_per_second * self.pixels / (size[0] * size[1])


def train_steps(cell: Cell) -> list[tuple[int, tuple[int, int]]] | None:
    """(steps, input size) per phase; None when an epoch's length is unknown (a dataset without a
    published size). Epochs follow harness.data.sampler.epoch_steps and the recipe's epoch_unit,
    at the published sizes (harness.engine.cell.training_plans counts the data on disk instead,
    which for a spec without dataset roots is the synthetic stand-in)."""
    sizes = {"train": cell.train_dataset, "finetune": cell.finetune_dataset}
    counts: dict[str, tuple[int, int]] = {}
    for on, name in sizes.items():
        if name is None:
            continue
        known = [PUBLISHED.get(split_of(member)[0], {}) for member in members(name)]
        if all(k.get("train_ids") and k.get("train_images") for k in known):
            counts[on] = (sum(k["train_images"] for k in known), sum(k["train_ids"] for k in known))
    needs = {p.on for p in schedule.phases(cell.train) if p.epochs is not None}
    if needs - set(counts):
        return None
    t = cell.train

    def per_epoch(on: str) -> int:
        images, ids = counts.get(on, (0, 0))
        return epoch_steps(
            t.epoch_unit, num_images=images, num_ids=ids, ids_per_batch=t.ids_per_batch, images_per_id=t.images_per_id
        )

    plans = schedule.plan(t, per_epoch)
    return [(plan.steps, plan.input_size) for plan in plans]


def profile_rates(store: Store, source: str) -> dict[tuple[str, str, str], Rate]:
    """(method, variant, backbone) -> the mean per-GPU training rate of the store's GPU profile rows."""
    found: dict[tuple[str, str, str], list[dict]] = {}
    for row in store.read_profiles().profiles:  # not the result rows: 100,000 of them in a big store
        if row.get("gpu_model") and row.get("train_images_per_second_per_device"):
            found.setdefault((row["method"], row["variant"], row["backbone"]), []).append(row)
    rates = {}
    for key, rows in found.items():
        per_pixel = [r["train_images_per_second_per_device"] * r["input_height"] * r["input_width"] for r in rows]
        rates[key] = Rate(sum(per_pixel) / len(per_pixel), 1, source, rows[-1]["gpu_model"])
    return rates


def prior_rates() -> dict[str, Rate]:
    """backbone -> the prior rate (module docstring, point 3)."""
    with open(PRIOR_FILE, newline="") as f:
        table = {row["backbone"]: row for row in csv.DictReader(f)}
    name, images, (height, width) = REFERENCE
    reference = float(table[name]["gflops"]) / (int(table[name]["height"]) * int(table[name]["width"]))
    rates = {}
    for backbone, row in table.items():
        per_pixel = float(row["gflops"]) / (int(row["height"]) * int(row["width"]))
        rates[backbone] = Rate(
            images * reference / per_pixel, height * width, "prior", "A100 80GB (published ResNet-50 rate)"
        )
    return rates


def gpus_per_cell(resources: Resources) -> int:
    return resources.nodes * resources.gpus_per_node if resources.gpus_per_node else resources.world_size


def estimate(arrays: Sequence[Sequence[Cell]], resources: Resources, slurm: SlurmConfig, store: Store) -> str:
    """The GPU-hours of each array and in total, the implied --time per cell, and where the rates came from."""
    stored = profile_rates(store, "store")
    shipped = profile_rates(Store(SHIPPED), "shipped") if SHIPPED.resolve() != store.root.resolve() else {}
    prior = prior_rates()
    gpus = gpus_per_cell(resources)
    counts = {"store": 0, "shipped": 0, "prior": 0}
    devices: dict[str, set[str]] = {"store": set(), "shipped": set(), "prior": set()}
    unknown: list[str] = []
    lines, total, longest = ["", f"GPU-hours (training only, {gpus} GPU(s) per cell):"], 0.0, 0.0
    for number, cells in enumerate(arrays, start=1):
        hours = 0.0
        for cell in cells:
            key = (cell.method, cell.variant, cell.backbone)
            rate = stored.get(key) or shipped.get(key) or prior.get(cell.backbone)
            steps = train_steps(cell)
            if rate is None or steps is None:
                unknown.append(
                    f"{cell.id} ({cell.method}:{cell.variant}/{cell.backbone} on {cell.train_dataset}: "
                    f"{'no rate for this backbone' if rate is None else 'no published training-set size'})"
                )
                continue
            batch = cell.train.ids_per_batch * cell.train.images_per_id
            seconds = sum(n * batch / rate.at(size) for n, size in steps)  # GPU-seconds
            counts[rate.source] += 1
            devices[rate.source].add(rate.device)
            hours += seconds / 3600
            longest = max(longest, seconds / gpus)
        total += hours
        lines.append(f"  array {number} ({len(cells)} cell(s)): {hours:.1f} GPU-hours")
    lines.append(f"  total: {total:.1f} GPU-hours for {sum(counts.values())} cell(s)")
    implied = math.ceil((longest * 1.1 / 60 + 10) / 10) * 10
    attempts = math.ceil(implied / slurm.time)
    lines.append(
        f"  implied --time per cell: {implied} min (the longest cell's training, plus 10% and 10 min)"
        + (
            f"; with --time {slurm.time} it takes {attempts} attempts, requeued from its checkpoints"
            f"{' (more than [slurm] max_requeues allows)' if attempts - 1 > slurm.max_requeues else ''}"
            if attempts > 1
            else ""
        )
    )
    names = {
        "store": "the store's GPU profile rows",
        "shipped": "the GPU profile rows committed with reidbench",
        "prior": f"the per-backbone prior shipped with reidbench ({PRIOR_FILE.name}: NVIDIA's published A100 "
        f"ResNet-50 rate scaled by multiply-adds; within a factor of two)",
    }
    used = [f"{counts[s]} cell(s) from {names[s]} [{', '.join(sorted(devices[s]))}]" for s in names if counts[s]]
    lines.append("  rates: " + ("; ".join(used) if used else "none"))
    lines.append("  epochs counted at the published training-set sizes (the real data a GPU run trains on)")
    if unknown:
        lines.append(
            f"  not estimated: {len(unknown)} cell(s): " + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        )
    return "\n".join(lines)
