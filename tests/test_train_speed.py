"""The training loop's speed options change how fast it runs, not what it computes.

Each option is run on and off for a few CPU steps of the baseline (tiny ResNet-18, tiny inputs)
from the same weights on the same batches; the losses must agree within the option's tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from harness.engine.train import NonFiniteLoss, build_optimizer, build_scheduler, resolve_precision, train
from harness.spec import TrainConfig
from methods import create_model

STEPS = 4


def baseline() -> nn.Module:
    torch.manual_seed(0)
    return create_model("baseline", backbone="resnet18", num_classes=6, pretrained=False)


def batches(n: int = STEPS):
    generator = torch.Generator().manual_seed(1)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return [(torch.randn(8, 3, 32, 16, generator=generator), pids, torch.zeros(8)) for _ in range(n)]


def losses_of(model: nn.Module, *, channels_last=False, compile=False, optimizer=None, **options) -> list[float]:
    """The training loss at every step."""
    config = TrainConfig(iterations=STEPS, warmup=0, milestones=(), lr=1e-3)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer(model) if optimizer else build_optimizer(model, config)
    seen: list[float] = []

    def recorded(outputs, pids):
        terms = model.losses(outputs, pids)
        seen.append(float(sum(terms.values()).detach()))
        return terms

    train(
        torch.compile(model) if compile else model,
        recorded,
        batches(),
        optimizer,
        build_scheduler(optimizer, config, 1),
        device=torch.device("cpu"),
        channels_last=channels_last,
        log=lambda m: None,
        **options,
    )
    return seen


@pytest.fixture(scope="module")
def reference() -> list[float]:
    return losses_of(baseline())


def test_reference_losses_change_over_steps(reference):
    assert len(reference) == STEPS and len(set(reference)) == STEPS  # the log parsed, the model trains


def test_channels_last_gives_the_same_losses(reference):
    # The convolutions sum in another order in the channels-last layout, and Adam's first steps
    # divide by the gradients' size, so float rounding grows to 1.2e-3 of the loss by step 4
    # (torch 2.14 on the CPU); a model that trains differently (another initialisation) is 17% off.
    assert losses_of(baseline(), channels_last=True) == pytest.approx(reference, rel=5e-3)


def test_checking_every_few_steps_gives_the_same_losses(reference):
    model = baseline()
    config = TrainConfig(iterations=STEPS, warmup=0, milestones=(), lr=1e-3)
    optimizer = build_optimizer(model, config)
    result = train(
        model,
        model.losses,
        batches(),
        optimizer,
        build_scheduler(optimizer, config, 1),
        device=torch.device("cpu"),
        check_every=3,
        log_every=100,
        log=lambda m: None,
    )
    assert sum(result.losses.values()) == pytest.approx(reference[-1], rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused optimizers are used on GPUs only")
def test_fused_optimizer_on_a_gpu_matches_the_plain_one():
    config = TrainConfig(iterations=STEPS, warmup=0, milestones=(), lr=1e-3)
    model = nn.Linear(64, 8).cuda()
    plain = copy.deepcopy(model)
    fused = build_optimizer(model, config)
    reference = torch.optim.Adam(plain.parameters(), lr=1e-3, weight_decay=5e-4, foreach=False)
    assert fused.defaults["fused"]
    for _ in range(STEPS):
        x = torch.randn(16, 64, device="cuda")
        for net, optimizer in ((model, fused), (plain, reference)):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    torch.testing.assert_close(model.weight, plain.weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.05), ("fp16", 0.02)])
def test_mixed_precision_gives_the_same_losses_within_its_precision(reference, precision, tolerance):
    assert losses_of(baseline(), precision=precision) == pytest.approx(reference, rel=tolerance)


@pytest.mark.slow
def test_compiled_model_gives_the_same_losses(reference):
    assert losses_of(baseline(), compile=True) == pytest.approx(reference, rel=1e-3)


def test_precision_auto_is_fp32_on_the_cpu_and_names_are_checked():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="fp32"):
        resolve_precision("fp8", torch.device("cpu"))


def test_warmup_steps_are_left_out_of_the_measured_throughput():
    model = baseline()
    config = TrainConfig(iterations=STEPS, warmup=0, milestones=())
    optimizer = build_optimizer(model, config)
    result = train(
        model,
        model.losses,
        batches(),
        optimizer,
        build_scheduler(optimizer, config, 1),
        device=torch.device("cpu"),
        warmup_steps=1,
        log=lambda m: None,
    )
    assert result.warmup_steps == 1 and result.measured_images == 3 * 8
    assert 0 < result.measured_seconds < result.seconds and result.measured_images_per_second > 0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"logits": self.fc(x)}

    def losses(self, outputs, pids):
        return {"id": nn.functional.cross_entropy(outputs["logits"], pids)}


def tiny_batches(n, bad_at=None, rank=0, bad_rank=0):
    for step in range(n):
        x = torch.randn(6, 4)
        if step == bad_at and rank == bad_rank:
            x[0, 0] = float("nan")
        yield x, torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(6)


def run_tiny(n, *, bad_at=None, check_every, rank=0, bad_rank=0, world_size=1):
    torch.manual_seed(0)
    model = Tiny()
    config = TrainConfig(iterations=n, warmup=0, milestones=())
    optimizer = build_optimizer(model, config)
    return train(
        model,
        model.losses,
        tiny_batches(n, bad_at, rank, bad_rank),
        optimizer,
        build_scheduler(optimizer, config, 1),
        device=torch.device("cpu"),
        world_size=world_size,
        check_every=check_every,
        log=lambda m: None,
    )


def test_a_late_check_still_names_the_first_non_finite_step():
    with pytest.raises(NonFiniteLoss) as info:
        run_tiny(
            12, bad_at=5, check_every=4
        )  # batch 5 (0-based) is step 6, as the logs count; checks after steps 4 and 8
    assert info.value.step == 6 and "step 6" in str(info.value)


def _ddp_worker(rank: int, world_size: int, rendezvous: str, outcomes) -> None:
    # a file, not a TCP port: a port found free and then bound by the workers can be taken in between
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        run_tiny(12, bad_at=5, check_every=4, rank=rank, bad_rank=1, world_size=world_size)
        outcomes.put((rank, None))
    except NonFiniteLoss as err:
        outcomes.put((rank, err.step))
    finally:
        dist.destroy_process_group()


def test_every_rank_stops_at_the_step_where_one_rank_went_non_finite(tmp_path):
    context = mp.get_context("spawn")
    outcomes = context.Queue()
    rendezvous = str(tmp_path / "rendezvous")
    processes = [context.Process(target=_ddp_worker, args=(rank, 2, rendezvous, outcomes)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert sorted(outcomes.get(timeout=5) for _ in processes) == [(0, 6), (1, 6)]  # batch 5 is step 6


def test_speed_keys_leave_the_cell_id_alone_and_are_checked(tmp_path, make_spec):
    from harness.errors import UserError
    from harness.spec import load_spec

    def cell(**train):
        (only,) = load_spec(make_spec(file="spec", train=train)).cells
        return only

    plain = cell()
    fast = cell(precision="bf16", channels_last=False, compile=True, data_on_device=True, check_every=50)
    assert fast.id == plain.id and fast.train.precision == "bf16" and fast.train.data_on_device
    assert (plain.train.precision, plain.train.channels_last, plain.train.compile, plain.train.check_every) == (
        "auto",
        True,
        False,
        10,
    )
    with pytest.raises(UserError) as bad:
        cell(precision="bf61")
    line = (tmp_path / "spec.toml").read_text().splitlines().index('precision = "bf61"') + 1
    assert f"line {line}: unknown precision 'bf61'; did you mean 'bf16'" in str(bad.value)
    with pytest.raises(UserError, match="check_every must be at least 1"):
        cell(check_every=0)
