"""The training loop: optimizer, schedule, and a plain loop over P x K batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from harness.dist import all_reduce_mean
from harness.spec import TrainConfig


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops at once rather than train on garbage."""

    def __init__(self, step: int, terms: dict[str, float]):
        shown = ", ".join(f"{name}={value:.4g}" for name, value in terms.items())
        super().__init__(f"loss became non-finite at step {step}: {shown}")
        self.step, self.terms = step, terms


@dataclass(frozen=True)
class TrainResult:
    iterations: int
    seconds: float
    images_per_second: float | None
    losses: dict[str, float]  # the last step's terms, averaged over ranks


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    return config.iterations if config.iterations is not None else config.epochs * steps_per_epoch


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; supported: adam, sgd")


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then a step decay by `gamma` at each milestone; stepped every iteration."""
    unit = 1 if config.iterations is not None else steps_per_epoch
    warmup = config.warmup * unit
    milestones = [m * unit for m in config.milestones]

    def factor(step: int) -> float:
        decay = config.gamma ** sum(step >= m for m in milestones)
        if step < warmup:
            return decay * (config.warmup_factor + (1 - config.warmup_factor) * step / warmup)
        return decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(
    model: nn.Module,
    losses: Callable[[dict, torch.Tensor], dict[str, torch.Tensor]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    device: torch.device,
    world_size: int = 1,
    log_every: int = 20,
    log: Callable[[str], None] = print,
    start_step: int = 0,
    after_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train over `batches`; every step's loss terms are averaged over ranks and checked.

    The check costs one small all-reduce per step, and makes every rank stop at the same step
    when any rank's loss is not finite. A resumed run starts at `start_step` (steps count from
    there); `after_step(steps done)` runs after every step (checkpoints, see harness.checkpoint).
    """
    model.train()
    start, steps, images, terms = time.perf_counter(), 0, 0, {}
    for step, (inputs, pids, _) in enumerate(batches, start=start_step):
        inputs = inputs.to(device, non_blocking=True)
        pids = pids.to(device, non_blocking=True)
        loss_terms = losses(model(inputs), pids)
        reduced = all_reduce_mean(torch.stack([t.detach() for t in loss_terms.values()]))
        terms = dict(zip(loss_terms, reduced.tolist()))
        if not torch.isfinite(reduced).all():
            raise NonFiniteLoss(step, terms)
        optimizer.zero_grad(set_to_none=True)
        sum(loss_terms.values()).backward()
        optimizer.step()
        scheduler.step()
        steps, images = steps + 1, images + len(inputs) * world_size
        if (step + 1) % log_every == 0:
            shown = " ".join(f"{k}={v:.3f}" for k, v in terms.items())
            rate = images / (time.perf_counter() - start)
            log(f"step {step + 1}: {shown} lr={scheduler.get_last_lr()[0]:.2e} {rate:.1f} img/s")
        if after_step is not None:
            after_step(step + 1)
    seconds = time.perf_counter() - start
    return TrainResult(start_step + steps, seconds, images / seconds if steps else None, terms)


@torch.no_grad()
def extract_features(model: nn.Module, batches: Iterable, device: torch.device) -> torch.Tensor:
    """Embeddings of every batch, in order, on the CPU (`model` unwrapped from DDP)."""
    model.eval()
    chunks = [model(inputs.to(device, non_blocking=True)).float().cpu() for inputs, _, _ in batches]
    return torch.cat(chunks) if chunks else torch.empty(0, model.embedding_dim)
