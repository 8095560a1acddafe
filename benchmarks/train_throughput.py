"""Training throughput: reidbench's loop against a bare PyTorch loop, in one process, alternating.

Both train the baseline (ResNet-50 by default, 256 x 128 inputs, P x K batches) from the same
initial weights on the same stream of synthetic batches. The bare loop is what a torchvision-style
script does with nothing else: move the batch, forward, loss, zero_grad, backward, optimizer step,
in fp32 with a default Adam. reidbench's loop is `harness.engine.train.train` with the speed options of
the [train] defaults, or the ones given here. After one warm-up round each, rounds alternate
(reidbench, bare, bare, reidbench, ...) so that drift in the machine's speed cancels out; the
device is synchronised around every round, and the ratio is the median over adjacent pairs of
rounds. On a GPU, NVML's SM utilisation is sampled meanwhile.

Then each registered method's own throughput with reidbench's loop, relative to the baseline's.

Targets (issue 9): ratio >= 0.97 on a CPU with the defaults; on a GPU >= 1.3 with the speed
options on against the bare fp32 loop, and SM utilisation >= 90 %.

    flock /tmp/reidbench-heavy.lock python benchmarks/train_throughput.py --batch 8 --steps 2 --rounds 8
    python benchmarks/train_throughput.py --device cuda --batch 64 --steps 30 --rounds 4 --compile
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import torch

from harness.engine.gpu import GpuSampler, synchronize
from harness.engine.train import build_optimizer, build_scheduler, resolve_precision, train
from harness.profile import measure, synthetic_batches
from harness.spec import TrainConfig
from methods import create_model, method_names, method_variants

NUM_CLASSES = 751


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=64, help="images per step: P identities x 4 images")
    parser.add_argument("--input", default="256x128", help="HxW")
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds per loop, after one warm-up round each")
    parser.add_argument("--precision", default=TrainConfig.precision, choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=TrainConfig.channels_last)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=TrainConfig.compile)
    parser.add_argument(
        "--data-on-device",
        action=argparse.BooleanOptionalAction,
        default=TrainConfig.data_on_device,
        help="reidbench's batches already on the device, as with [train] data_on_device",
    )
    parser.add_argument(
        "--method-steps", type=int, default=None, help="steps per method in the per-method table (default: --steps)"
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    height, width = (int(v) for v in args.input.lower().split("x"))
    config = TrainConfig(
        input_size=(height, width),
        ids_per_batch=args.batch // 4,
        images_per_id=4,
        iterations=10**6,
        warmup=0,
        milestones=(),
        pretrained=False,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        data_on_device=args.data_on_device,
    )
    precision = resolve_precision(config.precision, device)
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
        f"({torch.get_num_threads()} CPU threads), torch {torch.__version__}"
    )
    print(
        f"model: baseline on {args.backbone}, input {height}x{width}, batch {config.ids_per_batch}x4 = {args.batch}, "
        f"{args.steps} steps per round, {args.rounds} measured rounds per loop"
    )
    print(
        f"reidbench loop: precision {precision}, channels_last {config.channels_last}, compile {config.compile}, "
        f"data on device {config.data_on_device}, check_every {config.check_every}; bare loop: fp32, plain Adam"
    )

    torch.manual_seed(0)
    ours = create_model("baseline", backbone=args.backbone, num_classes=NUM_CLASSES, pretrained=False).to(device)
    bare = copy.deepcopy(ours)
    stream = [
        (x.cpu(), y.cpu(), c.cpu())
        for x, y, c in synthetic_batches(
            4,
            ids_per_batch=config.ids_per_batch,
            images_per_id=4,
            size=config.input_size,
            num_classes=NUM_CLASSES,
            device=torch.device("cpu"),
        )
    ]
    if config.data_on_device:
        our_stream = [tuple(t.to(device) for t in batch) for batch in stream]
    elif device.type == "cuda":
        our_stream = [tuple(t.pin_memory() for t in batch) for batch in stream]  # as reidbench's DataLoader pins
    else:
        our_stream = stream

    if config.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    our_run = torch.compile(ours) if config.compile else ours
    our_optimizer = build_optimizer(ours, config)
    our_scheduler = build_scheduler(our_optimizer, config, 1)
    bare_optimizer = torch.optim.Adam(bare.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def reidbench_round() -> None:
        batches = (our_stream[i % len(our_stream)] for i in range(args.steps))
        train(
            our_run,
            ours.losses,
            batches,
            our_optimizer,
            our_scheduler,
            device=device,
            precision=precision,
            channels_last=config.channels_last,
            check_every=config.check_every,
            log_every=config.log_every,
            log=lambda m: None,
        )

    def bare_round() -> None:
        bare.train()
        for i in range(args.steps):
            inputs, pids, _ = stream[i % len(stream)]
            inputs, pids = inputs.to(device), pids.to(device)
            loss = sum(bare.losses(bare(inputs), pids).values())
            bare_optimizer.zero_grad()
            loss.backward()
            bare_optimizer.step()

    loops = {"reidbench": reidbench_round, "bare": bare_round}
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    windows: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    with GpuSampler([device]) as sampler:
        for _name, run in loops.items():  # warm-up round: allocator, cuDNN autotuning, compilation
            run()
        for round_ in range(args.rounds):
            order = list(loops) if round_ % 2 == 0 else list(reversed(loops))
            for name in order:
                synchronize(device)
                start = time.perf_counter()
                loops[name]()
                synchronize(device)
                end = time.perf_counter()
                seconds[name].append(end - start)
                windows[name].append((start, end))
    images = args.batch * args.steps
    rates = {name: [images / s for s in seconds[name]] for name in loops}
    print()
    for name in loops:
        busy = _sm_busy(sampler, windows[name])
        overall = images * args.rounds / sum(seconds[name])
        print(
            f"{name:>9} loop: {statistics.median(rates[name]):8.2f} img/s median of rounds, {overall:8.2f} overall, "
            f"rounds {' '.join(f'{r:.2f}' for r in rates[name])}"
            + (f"; SM busy {busy:.0f}%" if busy is not None else "")
        )
    # Each reidbench round against the bare round next to it, so a burst of load elsewhere on the
    # machine spoils one pair rather than one side.
    paired = statistics.median(a / b for a, b in zip(rates["reidbench"], rates["bare"]))
    print(f"    ratio: {paired:.3f}  (reidbench / bare, median over adjacent pairs of rounds)")
    if sampler.note:
        print(f"GPU figures: none ({sampler.note})")

    print("\nper method, reidbench's loop (warm-up excluded):")
    method_steps = args.method_steps or args.steps
    baseline_rate = None
    for method in sorted(method_names(), key=lambda name: name != "baseline"):
        variant = method_variants(method)[0]
        torch.manual_seed(0)
        model = create_model(method, variant=variant, backbone=args.backbone, num_classes=NUM_CLASSES, pretrained=False)
        if model.train_cues:
            print(f"  {method}:{variant}: skipped, needs cue maps {model.train_cues} (no synthetic maker yet)")
            continue
        measured = measure(
            model,
            dataclasses.replace(config, iterations=None, epochs=1),
            device=device,
            steps=method_steps,
            warmup=max(1, method_steps // 3),
            num_classes=NUM_CLASSES,
        )
        train_rate = measured.train.measured_images_per_second
        baseline_rate = baseline_rate or (train_rate if method == "baseline" else None)
        relative = f"{train_rate / baseline_rate:.2f}x baseline" if baseline_rate else ""
        print(
            f"  {method}:{variant}: train {train_rate:8.2f} img/s, infer {measured.infer_images_per_second:8.2f} img/s  {relative}"
        )


def _sm_busy(sampler: GpuSampler, windows: list[tuple[float, float]]) -> float | None:
    """Mean NVML SM utilisation over the samples taken inside the given time windows."""
    values = [
        sample[0][0]
        for t, sample in sampler.samples
        if sample[0][0] is not None and any(a <= t <= b for a, b in windows)
    ]
    return sum(values) / len(values) if values else None


if __name__ == "__main__":
    main()
