"""The training loop's schedule and its stop on a non-finite loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.engine.train import NonFiniteLoss, build_optimizer, build_scheduler, train
from harness.spec import TrainConfig


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"logits": self.fc(x)}

    def losses(self, outputs, pids):
        return {"id": nn.functional.cross_entropy(outputs["logits"], pids), "double": 2 * outputs["logits"].mean()}


def batches(n, bad_at=None):
    for step in range(n):
        x = torch.randn(6, 4)
        if step == bad_at:
            x[0, 0] = float("inf")
        yield x, torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(6)


def run(model, n, bad_at=None):
    config = TrainConfig(iterations=n, warmup=0, milestones=())
    optimizer = build_optimizer(model, config)
    return train(
        model,
        model.losses,
        batches(n, bad_at),
        optimizer,
        build_scheduler(optimizer, config, 1),
        device=torch.device("cpu"),
        log=lambda m: None,
    )


def test_trains_and_reports_figures():
    result = run(Tiny(), 5)
    assert result.iterations == 5 and result.images_per_second > 0 and set(result.losses) == {"id", "double"}


def test_stops_at_the_first_non_finite_step_with_its_terms():
    model = Tiny()
    with pytest.raises(NonFiniteLoss) as info:
        run(model, 10, bad_at=3)
    assert info.value.step == 4 and set(info.value.terms) == {"id", "double"}  # the 4th step, as the logs count
    assert "step 4" in str(info.value) and "id=" in str(info.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step never updated the weights


def test_warmup_then_step_decay_in_epochs():
    config = TrainConfig(epochs=10, lr=1.0, warmup=2, warmup_factor=0.1, milestones=(4, 8), gamma=0.5)
    optimizer = build_optimizer(Tiny(), config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55) and lrs[10] == 1.0
    assert lrs[19] == 1.0 and lrs[20] == 0.5 and lrs[40] == 0.25
