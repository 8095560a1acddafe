"""A cell's training data: one dataset or a union "a+b+c", and a fine-tuning target, in one label space.

SPReID trains on the union of several datasets, then fine-tunes on each target. Identities are
relabelled per (dataset, pid) into one space of classifier labels: the members in the order the
union names them, each member's training identities in increasing pid order, take labels 0, 1, 2,
... (so a single dataset gets the labels it always had). A fine-tuning target that is a member
keeps the labels it has in the union (its identities are a subset of the union's); a target that is
not a member is appended after the union's identities. The classifier is built for the whole space
from the start, so the weights carry across the phase boundary unchanged.

Every sample keeps its own path and its dataset's root (`Sample.root`), so images and cue maps load
from the member they came from. A union has no test split of its own: by default its cells are
tested on its members (harness/spec/parse.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.data import ReidData, Sample, load_dataset
from harness.errors import UserError


def members(name: str) -> tuple[str, ...]:
    """The datasets a training-set name stands for: "a+b" -> ("a", "b"); "a" -> ("a",)."""
    return tuple(name.split("+"))


@dataclass(frozen=True)
class TrainingData:
    num_classes: int  # the size of the label space: the union's identities, plus a target's if not a member
    sets: dict[str, list[Sample]]  # "train" (the union), "finetune" (the target): samples with pids as labels
    loaded: dict[str, ReidData]  # every dataset read, by name, as read (test sets reuse them)


def load_training(train_dataset: str, finetune_dataset: str | None, root_of: Callable[[str], Path]) -> TrainingData:
    """Read the members (and the target), and relabel their training samples into one label space."""
    names = members(train_dataset)
    extra = (finetune_dataset,) if finetune_dataset and finetune_dataset not in names else ()
    roots = {name: Path(root_of(name)) for name in (*names, *extra)}
    loaded = {name: load_dataset(name, root) for name, root in roots.items()}
    labels: dict[tuple[str, int], int] = {}
    for name in (*names, *extra):
        if not loaded[name].train:
            raise UserError(
                f"dataset {name} ({roots[name]}) has no training images, so a cell cannot train on it; "
                "use it in [grid] test_datasets only."
            )
        for pid in sorted({s.pid for s in loaded[name].train}):
            labels[name, pid] = len(labels)

    def relabelled(name: str) -> list[Sample]:
        root = str(roots[name])
        return [dataclasses.replace(s, pid=labels[name, s.pid], root=root) for s in loaded[name].train]

    sets = {"train": [s for name in names for s in relabelled(name)]}
    if finetune_dataset:
        sets["finetune"] = relabelled(finetune_dataset)
    return TrainingData(len(labels), sets, loaded)
