"""Learning-rate schedules and training phases, as pure functions of the step.

A cell trains in one or more consecutive phases (`[[train.phases]]`; without them, one phase made
of `[train]` itself). Each phase has its own length, input size, learning rate and dataset (the
training set, or the cell's fine-tuning target), and restarts the schedule at its own lr:

- a linear warm-up over `warmup` units from lr * warmup_factor, then
- step:        lr * gamma ** (milestones passed)            (the warm-up multiplies this)
- cosine:      lr * (1 + cos(pi * t' / T')) / 2, from lr to 0 over the rest of the phase
               (t', T': step and length after the warm-up)
- exponential: lr * gamma ** floor(exp_decays * t / T)      (the warm-up multiplies this), so the
               lr is decayed exp_decays times, evenly, the last one at the end of the phase
- poly:        lr * (1 - floor(exp_decays * t / T) / exp_decays) ** gamma   (the warm-up multiplies
               this): "poly" decay in exp_decays steps, SPReID's released schedule (main.py:
               "Decrease learning rate (poly in 10 steps)", decay_rate = (1.0 - iterk / max_iter) ** 0.9
               at every tenth of max_iter; its iterk is the 0-based step, one less than t, a 1/T
               difference left out)

where t is the step within the phase and T its length in steps. `warmup` and `milestones` are in
the phase's unit: iterations, or epochs of the phase's dataset. The step counter itself is global
(it runs on across phases), so a checkpoint's step says which phase it is in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from harness.spec import SCHEDULES, Phase, TrainConfig


@dataclass(frozen=True)
class PhasePlan:
    """A phase resolved to global steps."""

    index: int  # 0-based
    on: str  # "train" (the cell's training set) | "finetune" (its fine-tuning target)
    start: int  # the global step it begins at
    steps: int
    unit: int  # steps per unit of warmup and milestones: 1 for iterations, steps per epoch for epochs
    lr: float
    input_size: tuple[int, int]
    classifier: str = "keep"  # "new": the phase trains a new identity classifier (harness/engine/heads.py)
    classifier_lr: float | None = None  # the classifier's lr in the phase (None: `lr`)

    @property
    def end(self) -> int:
        return self.start + self.steps


def phases(config: TrainConfig) -> tuple[Phase, ...]:
    """The recipe's phases; a recipe without `[[train.phases]]` is one phase on the training set."""
    if config.phases:
        return config.phases
    return (Phase(iterations=config.iterations, epochs=config.epochs, input_size=config.input_size, lr=config.lr),)


def plan(config: TrainConfig, steps_per_epoch: int | Callable[[str], int]) -> tuple[PhasePlan, ...]:
    """Each phase's global steps. `steps_per_epoch` is a number, or a function of the phase's `on`
    (the training set and the fine-tuning target have different sizes)."""
    per_epoch = steps_per_epoch if callable(steps_per_epoch) else (lambda on: steps_per_epoch)
    plans, start = [], 0
    for index, phase in enumerate(phases(config)):
        epoch = per_epoch(phase.on)
        steps, unit = (phase.iterations, 1) if phase.iterations is not None else (phase.epochs * epoch, epoch)
        size = tuple(phase.input_size) if phase.input_size is not None else config.input_size
        lr = phase.lr if phase.lr is not None else config.lr
        plans.append(PhasePlan(index, phase.on, start, steps, unit, lr, size, phase.classifier, phase.classifier_lr))
        start += steps
    return tuple(plans)


def total(plans: tuple[PhasePlan, ...]) -> int:
    return plans[-1].end if plans else 0


def phase_at(plans: tuple[PhasePlan, ...], step: int) -> PhasePlan:
    """The phase that global step `step` belongs to (the last one from the end of training on)."""
    return next((p for p in plans if step < p.end), plans[-1])


def factor(config: TrainConfig, step: int, steps: int, unit: int) -> float:
    """The multiplier of a phase's lr at `step` of a phase `steps` long (see the module docstring)."""
    warmup = config.warmup * unit
    ramp = config.warmup_factor + (1 - config.warmup_factor) * step / warmup if step < warmup else 1.0
    if config.schedule == "step":
        return ramp * config.gamma ** sum(step >= m * unit for m in config.milestones)
    if config.schedule == "cosine":
        if step < warmup:
            return ramp
        rest = steps - warmup
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, rest) / rest)) if rest > 0 else 0.0
    if config.schedule == "exponential":
        return ramp * config.gamma ** math.floor(config.exp_decays * min(step, steps) / steps) if steps else ramp
    if config.schedule == "poly":
        done = math.floor(config.exp_decays * min(step, steps) / steps) / config.exp_decays if steps else 0.0
        return ramp * (1.0 - done) ** config.gamma
    raise ValueError(f"unknown schedule {config.schedule!r}; supported: {', '.join(SCHEDULES)}")


def lr_lambda(config: TrainConfig, plans: tuple[PhasePlan, ...], *, classifier: bool = False) -> Callable[[int], float]:
    """The multiplier of `[train] lr` (the optimizer's base lr) at each global step, for LambdaLR;
    with `classifier`, of the identity classifier's lr (a phase's `classifier_lr`, else its lr)."""

    def at(step: int) -> float:
        p = phase_at(plans, step)
        lr = p.classifier_lr if classifier and p.classifier_lr is not None else p.lr
        ratio = 1.0 if lr == config.lr else lr / config.lr  # the parser makes [train] lr > 0 when phases differ
        return ratio * factor(config, step - p.start, p.steps, p.unit)

    return at
