"""The training loop: optimizer, schedule, and a plain loop over P x K batches.

Speed options (none changes what is computed beyond numerical noise): mixed precision (bf16, or
fp16 with a gradient scaler), channels-last inputs, fused optimizers on GPUs, and loss terms
kept on the device and checked every few steps rather than copied to the host at every step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from harness.engine import schedule
from harness.engine.dist import all_reduce_mean
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
    warmup_steps: int = 0  # steps left out of the measured throughput
    measured_images: int = 0  # images (all ranks) of the steps after the warm-up
    measured_seconds: float = 0.0  # their wall time, device synchronised
    measured_from: float | None = None  # time.perf_counter() when they began

    @property
    def measured_images_per_second(self) -> float | None:
        """Throughput after the warm-up; the whole run's when no step came after it."""
        if self.measured_images and self.measured_seconds > 0:
            return self.measured_images / self.measured_seconds
        return self.images_per_second


def total_steps(config: TrainConfig, steps_per_epoch: int | Callable[[str], int]) -> int:
    """Steps over all of the recipe's phases (see harness/engine/schedule.py)."""
    return schedule.total(schedule.plan(config, steps_per_epoch))


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on GPUs that support it, fp16 on older GPUs, and fp32 on the CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; supported: auto, fp32, bf16, fp16")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass and the losses; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def build_optimizer(
    model: nn.Module, config: TrainConfig, groups: list[list[nn.Parameter]] | None = None
) -> torch.optim.Optimizer:
    """Adam or SGD; fused kernels when every parameter is on a GPU. On the CPU torch's default
    (one tensor at a time), which measured faster there than the multi-tensor (foreach) one.
    `groups`: parameter groups, each scheduled by its own lambda (harness/engine/heads.py)."""
    params = [p for p in model.parameters() if p.requires_grad]
    speed = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    wanted = [{"params": group} for group in groups] if groups else params
    if config.optimizer == "adam":
        return torch.optim.Adam(wanted, lr=config.lr, weight_decay=config.weight_decay, **speed)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            wanted,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
            **speed,
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}; supported: adam, sgd")


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int | Callable[[str], int]
) -> torch.optim.lr_scheduler.LambdaLR:
    """Each phase's linear warm-up then step, cosine or exponential decay (harness/engine/schedule.py),
    stepped every iteration. `steps_per_epoch`: a number, or a function of a phase's `on`. With two
    parameter groups (harness/engine/heads.py) the second is the identity classifier, at the phases'
    classifier_lr."""
    plans = schedule.plan(config, steps_per_epoch)
    lambdas = [schedule.lr_lambda(config, plans)]
    if len(optimizer.param_groups) == 2:
        lambdas.append(schedule.lr_lambda(config, plans, classifier=True))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas if len(lambdas) > 1 else lambdas[0])


def train(
    model: nn.Module,
    losses: Callable[[dict, torch.Tensor], dict[str, torch.Tensor]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    device: torch.device,
    world_size: int = 1,
    precision: str = "fp32",
    channels_last: bool = False,
    check_every: int = 1,
    warmup_steps: int = 0,
    log_every: int = 20,
    log: Callable[[str], None] = print,
    start_step: int = 0,
    after_step: Callable[[int, Callable[[], dict[str, float]]], None] | None = None,
    grad_clip: float = 0.0,
    record: Callable[[int, dict[str, float], float, float], None] | None = None,
) -> TrainResult:
    """Train over `batches`; the loss terms are averaged over ranks and checked every `check_every` steps.

    A check costs one small all-reduce and one host sync; every rank checks at the same steps, so
    all stop together, at the first step whose loss was not finite. With `check_every` = 1 that
    step never updates the weights. `precision` is resolved already (see resolve_precision); the
    first `warmup_steps` are left out of the measured throughput. A resumed run starts at
    `start_step`; `after_step(steps done, check)` runs after every step (checkpoints, see
    harness.engine.checkpoint), and calls `check()` before it saves, so that no checkpoint holds weights
    trained on a non-finite loss. `grad_clip` > 0 clips the global L2 norm of the gradients
    before each step (after DDP's all-reduce, so every rank clips alike; unscaled first under fp16).
    `record(steps done, terms, lr, images per second)` gets every logged step's terms averaged over
    ranks (the curves), and the last step's when it falls between log lines.
    """
    model.train()
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    watch = _LossWatch()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start, steps, images, terms = time.perf_counter(), 0, 0, {}
    measured_from, measured_images = None, 0
    for step, (inputs, pids, _, *cues) in enumerate(batches, start=start_step):  # cues: when the method asks for some
        if step == start_step + warmup_steps:
            measured_from, measured_images = _synchronized_time(device), images
        inputs = inputs.to(device, non_blocking=True)
        if channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        pids = pids.to(device, non_blocking=True)
        with autocast(precision, device):
            loss_terms = losses(model(inputs, *cues_on(device, cues)), pids)
        watch.add(step, loss_terms)
        if (step + 1) % check_every == 0 or (step + 1) % log_every == 0:
            terms = watch.check()  # raises NonFiniteLoss on every rank alike
        optimizer.zero_grad(set_to_none=True)
        total = sum(loss_terms.values())
        if scaler is None:
            total.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
        else:
            scaler.scale(total).backward()
            if grad_clip:
                scaler.unscale_(optimizer)  # clip the true gradients; step() then does not unscale again
                nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(optimizer)
            scaler.update()
        lr = optimizer.param_groups[0]["lr"]  # the one this step used
        scheduler.step()
        steps, images = steps + 1, images + len(inputs) * world_size
        if (step + 1) % log_every == 0:
            shown = " ".join(f"{k}={v:.3f}" for k, v in terms.items())
            rate = images / (time.perf_counter() - start)
            log(f"step {step + 1}: {shown} lr={scheduler.get_last_lr()[0]:.2e} {rate:.1f} img/s")
            if record is not None:
                record(step + 1, terms, lr, rate)
        if after_step is not None:
            after_step(step + 1, watch.check)
    terms = watch.check()
    if record is not None and steps and (start_step + steps) % log_every:  # the curve always ends at the last step
        record(start_step + steps, terms, optimizer.param_groups[0]["lr"], images / (time.perf_counter() - start))
    end = _synchronized_time(device)
    seconds = end - start
    measured = end - measured_from if measured_from is not None else 0.0
    return TrainResult(
        start_step + steps,
        seconds,
        images / seconds if steps else None,
        terms,
        warmup_steps=min(warmup_steps, steps),
        measured_images=images - measured_images,
        measured_seconds=measured,
        measured_from=measured_from,
    )


def combine_results(results: list[TrainResult], start_step: int = 0) -> TrainResult:
    """One result for consecutive train() calls (a cell's phases): times and images add up, and
    the throughput after each call's warm-up is measured over all of them."""
    if len(results) == 1:
        return results[0]
    if not results:
        return TrainResult(start_step, 0.0, None, {})
    seconds = sum(r.seconds for r in results)
    images = sum(r.images_per_second * r.seconds for r in results if r.images_per_second)
    return TrainResult(
        results[-1].iterations,
        seconds,
        images / seconds if images and seconds else None,
        results[-1].losses,
        warmup_steps=sum(r.warmup_steps for r in results),
        measured_images=sum(r.measured_images for r in results),
        measured_seconds=sum(r.measured_seconds for r in results),
        measured_from=next((r.measured_from for r in results if r.measured_from is not None), None),
    )


class _LossWatch:
    """Loss terms kept on the device between checks, so a step costs no host sync."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.last: dict[str, float] = {}  # the last checked step's terms

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        self.names = list(terms)
        self.pending.append((step, torch.stack([t.detach().float() for t in terms.values()])))

    def check(self) -> dict[str, float]:
        """The last pending step's terms averaged over ranks; NonFiniteLoss at the first bad step."""
        if not self.pending:
            return self.last
        steps = [step for step, _ in self.pending]
        values = all_reduce_mean(torch.stack([v for _, v in self.pending])).tolist()
        self.pending = []
        for step, row in zip(steps, values):
            terms = dict(zip(self.names, row))
            if not all(math.isfinite(v) for v in row):
                raise NonFiniteLoss(step + 1, terms)  # numbered from 1, as the logs count steps
        self.last = terms
        return terms


def _synchronized_time(device: torch.device) -> float:
    """time.perf_counter() once the device has finished the work queued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def cues_on(device: torch.device, cues: list[dict]) -> list[dict]:
    """A batch's cue tensors (a one-element list, or none) moved to `device`."""
    return [{name: value.to(device, non_blocking=True) for name, value in c.items()} for c in cues]


@torch.no_grad()
def extract_features(model: nn.Module, batches: Iterable, device: torch.device) -> torch.Tensor:
    """Embeddings of every batch, in order, on the CPU (`model` unwrapped from DDP)."""
    model.eval()
    chunks = [
        model(inputs.to(device, non_blocking=True), *cues_on(device, cues)).float().cpu()
        for inputs, _, _, *cues in batches
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, model.embedding_dim)
