"""Learning-rate curves per schedule and phase, against hand-computed values; gradient clipping; Nesterov."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.engine import schedule
from harness.engine.train import build_optimizer, build_scheduler, train
from harness.spec import Phase, TrainConfig


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"out": self.fc(x)}

    def losses(self, outputs, pids):
        return {"mean": outputs["out"].float().mean()}


class Wide(Tiny):
    """10^4 weights whose gradients are 0.5 each (norm 50), small enough for fp16 under GradScaler's scale."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(100, 100)


def lrs(config: TrainConfig, steps: int, steps_per_epoch=1) -> list[float]:
    """The lr used at each of the first `steps` steps, read from a real optimizer and scheduler."""
    optimizer = build_optimizer(Tiny(), config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_step_schedule_is_unchanged():
    config = TrainConfig(iterations=30, lr=2.0, warmup=4, warmup_factor=0.5, milestones=(10, 20), gamma=0.1)
    assert config.schedule == "step"
    expected = [2.0 * (0.5 + 0.5 * s / 4 if s < 4 else 1.0) * 0.1 ** ((s >= 10) + (s >= 20)) for s in range(30)]
    assert lrs(config, 30) == pytest.approx(expected)
    assert lrs(
        TrainConfig(
            iterations=30, lr=2.0, warmup=4, warmup_factor=0.5, milestones=(10, 20), gamma=0.1, schedule="step"
        ),
        30,
    ) == pytest.approx(expected)


def test_warmup_then_cosine_ends_at_zero():
    config = TrainConfig(iterations=10, lr=1.0, warmup=2, warmup_factor=0.1, schedule="cosine")
    expected = [
        0.1,
        0.55,
        1.0,
        0.9619397663,
        0.8535533906,
        0.6913417162,
        0.5,
        0.3086582838,
        0.1464466094,
        0.0380602337,
        0.0,
    ]
    assert lrs(config, 11) == pytest.approx(expected)


def test_exponential_gives_ten_decays_of_0_9():
    config = TrainConfig(iterations=100, lr=1.0, warmup=0, schedule="exponential", gamma=0.9, exp_decays=10)
    got = lrs(config, 101)
    assert got == pytest.approx([0.9 ** (t // 10) for t in range(101)])
    assert got[9] == 1.0 and got[10] == pytest.approx(0.9) and got[99] == pytest.approx(0.9**9)
    assert got[100] == pytest.approx(0.9**10)  # the tenth decay lands at the end of the phase
    assert sum(b < a for a, b in zip(got, got[1:])) == 10


def test_poly_in_ten_steps_as_spreids_released_code():
    """SPReID's main.py: at every tenth of max_iter, lr = base * (1 - iterk / max_iter) ** 0.9; in the
    last tenth 0.126 of the base, against 0.9 ** 9 = 0.387 for the literal "exponential shift"."""
    config = TrainConfig(iterations=100, lr=1.0, warmup=0, schedule="poly", gamma=0.9, exp_decays=10)
    got = lrs(config, 100)
    assert got == pytest.approx([(1 - (t // 10) / 10) ** 0.9 for t in range(100)])
    assert got[9] == 1.0 and got[10] == pytest.approx(0.9**0.9) and got[99] == pytest.approx(0.1**0.9)
    assert got[99] == pytest.approx(0.126, abs=1e-3)


def test_each_phase_restarts_the_schedule_at_its_lr():
    config = TrainConfig(
        lr=0.01,
        warmup=0,
        schedule="exponential",
        exp_decays=2,
        gamma=0.5,
        phases=(Phase(iterations=4, lr=0.01), Phase(epochs=2, lr=0.001, on="finetune")),
    )
    per_epoch = {"train": 100, "finetune": 3}.get  # the target's epochs are 3 steps long
    plans = schedule.plan(config, per_epoch)
    assert [(p.start, p.steps, p.on) for p in plans] == [(0, 4, "train"), (4, 6, "finetune")]
    assert lrs(config, 10, per_epoch) == pytest.approx([0.01, 0.01, 0.005, 0.005] + [0.001] * 3 + [0.0005] * 3)


def test_warmup_and_milestones_count_in_the_phase_unit_from_its_start():
    config = TrainConfig(
        lr=1.0,
        warmup=1,
        warmup_factor=0.5,
        milestones=(1,),
        gamma=0.1,
        phases=(Phase(iterations=2, lr=1.0), Phase(epochs=2, lr=1.0)),
    )
    # phase 1 in iterations: warm-up and milestone after 1 step; phase 2 in epochs of 2 steps: after 2
    assert lrs(config, 6, 2) == pytest.approx([0.5, 0.1, 0.5, 0.75, 0.1, 0.1])
    assert schedule.phase_at(schedule.plan(config, 2), 2).index == 1
    assert schedule.phase_at(schedule.plan(config, 2), 99).index == 1  # after the end: the last phase


def update_norm(grad_clip: float, precision: str) -> float:
    """The L2 norm of one SGD step (lr 1, no momentum or decay): the norm of the (clipped) gradient."""
    torch.manual_seed(0)
    model = Wide()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    config = TrainConfig(
        iterations=1,
        optimizer="sgd",
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        warmup=0,
        milestones=(),
        grad_clip=grad_clip,
    )
    optimizer = build_optimizer(model, config)
    batch = [(torch.full((6, 100), 50.0), torch.zeros(6, dtype=torch.long), torch.zeros(6))]
    train(
        model,
        model.losses,
        batch,
        optimizer,
        build_scheduler(optimizer, config, 1),
        device=torch.device("cpu"),
        precision=precision,
        log=lambda m: None,
        grad_clip=grad_clip,
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float((after - before).norm())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])  # fp16: the GradScaler's gradients are unscaled first
def test_clipping_bounds_the_global_gradient_norm(precision):
    free = update_norm(0.0, precision)
    assert free == pytest.approx(50, rel=1e-2)
    assert update_norm(0.5, precision) == pytest.approx(0.5, rel=1e-3)
    assert update_norm(2 * free, precision) == pytest.approx(free, rel=1e-3)  # a bound above the norm changes nothing


def test_nesterov_momentum_reaches_sgd():
    group = build_optimizer(Tiny(), TrainConfig(optimizer="sgd", momentum=0.9, nesterov=True)).param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9
    assert build_optimizer(Tiny(), TrainConfig(optimizer="sgd")).param_groups[0]["nesterov"] is False


def test_cosine_over_epochs_uses_the_epoch_unit():
    config = TrainConfig(epochs=4, lr=1.0, warmup=1, warmup_factor=0.0, schedule="cosine")
    got = lrs(config, 9, steps_per_epoch=2)  # warm-up over 2 steps, cosine over the other 6
    assert got[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert got[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6))) and got[8] == pytest.approx(0.0)
