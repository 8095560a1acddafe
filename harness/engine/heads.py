"""Identity classifiers by training phase: a fine-tuning phase may train a new one at its own lr.

A `[[train.phases]]` entry may say `classifier = "new"`: from that phase on, the model's identity
classifier is a freshly initialised one sized to the identities of the phase's dataset (the method's
`new_classifier(num_classes)`, its own initialisation), and the phase's labels are that dataset's
identities numbered 0..n-1. `classifier_lr` gives the classifier its own lr in a phase (the rest of
the model keeps the phase's `lr`); both follow the phase's schedule. This is how SPReID's authors
fine-tune (methods/spreid.py): main.py builds a classifier of `label_dim_ft` outputs for the target
and trains it at lr 0.01 with the pretrained layers at 0.001.

So that a checkpoint holds the same parameters whatever phase it was taken in, every phase's
classifier is built before training and registered in `model.phase_classifiers`; `model.classifier`
is then a plain attribute naming the current one (not a second registration: its parameters appear
once in the state dict). `finish` puts the last phase's classifier back in place, so the kept model
is the method's ordinary model with `num_classes` = that classifier's outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from harness.engine import schedule
from harness.spec import TrainConfig


def used(config: TrainConfig) -> bool:
    """Whether the recipe gives any phase a new classifier or a classifier lr of its own."""
    return any(p.classifier == "new" or p.classifier_lr is not None for p in config.phases)


class PhaseHeads:
    """The classifier of each phase; installed on the model before the optimizer is built."""

    def __init__(
        self,
        model: nn.Module,
        plans: tuple[schedule.PhasePlan, ...],
        labels_of: Callable[[str], list[int]],
        *,
        seed: int,
    ):
        """`labels_of(on)`: the (union) labels of a phase's samples; `seed`: the new classifiers'
        initialisation (the same on every rank, and not drawn from the training RNG)."""
        head = getattr(model, "classifier", None)
        if not isinstance(head, nn.Linear) or not callable(getattr(model, "new_classifier", None)):
            raise ValueError(
                "[[train.phases]] classifier and classifier_lr need a model with one identity classifier "
                f"(`classifier` and `new_classifier(num_classes)`); {type(model).__name__} has none. "
                "Remove them from the phases, or use a method that has one (spreid)."
            )
        heads, current, self.maps = [head], 0, {}
        self.by_phase: list[int] = []
        for plan in plans:
            if plan.classifier == "new":
                pids = sorted(set(labels_of(plan.on)))
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed + 7_919 * (plan.index + 1))
                    new = model.new_classifier(len(pids))
                heads.append(new.to(next(head.parameters()).device))
                current = len(heads) - 1
                lookup = torch.full((max(pids) + 1,), -1, dtype=torch.long)
                lookup[pids] = torch.arange(len(pids))
                self.maps[current] = lookup
            self.by_phase.append(current)
        self.model, self.heads = model, nn.ModuleList(heads)
        self.plans = plans
        if len(heads) > 1:
            del model._modules["classifier"]
            model.phase_classifiers = self.heads
            object.__setattr__(model, "classifier", head)  # an alias, not a second registration

    def param_groups(self) -> list[list[nn.Parameter]]:
        """[the rest of the model, every classifier]: two groups, so each follows its own lr."""
        own = {id(p) for p in self.heads.parameters()}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in own]
        return [rest, [p for p in self.heads.parameters() if p.requires_grad]]

    def enter(self, plan: schedule.PhasePlan) -> torch.Tensor | None:
        """Point `model.classifier` at the phase's classifier; its label map (union label -> 0..n-1), if any."""
        index = self.by_phase[plan.index]
        if len(self.heads) > 1:
            object.__setattr__(self.model, "classifier", self.heads[index])
        return self.maps.get(index)

    def finish(self) -> int:
        """The last phase's classifier as the model's own `classifier`; its number of outputs."""
        head = self.heads[self.by_phase[-1]] if self.by_phase else self.heads[0]
        if len(self.heads) > 1:
            del self.model._modules["phase_classifiers"]
            del self.model.__dict__["classifier"]
            self.model.classifier = head
        return int(head.out_features)


def relabelled(losses: Callable, lookup: torch.Tensor | None, device: torch.device) -> Callable:
    """`losses(outputs, pids)` with the pids mapped by `lookup` (a phase with a new classifier)."""
    if lookup is None:
        return losses
    table = lookup.to(device)
    return lambda outputs, pids: losses(outputs, table[pids])
