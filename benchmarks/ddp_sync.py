"""What seeing the global batch costs per training step on two DDP processes, in one run.

A cell on N processes normalises with the global batch's BatchNorm statistics (harness.engine.dist:
torch's SyncBatchNorm on GPUs, GlobalBatchNorm on the CPU) and mines its batch-hard triplets over
the global batch (methods/losses.py gathers every process's features). Both add collectives to every
step. This times one training step (forward, losses, backward with DDP's gradient all-reduce, Adam)
of the baseline on synthetic P x K batches, on 2 processes, four ways:

    local       per-process BatchNorm, triplet mined per process (reidbench before issue 14)
    global BN   + BatchNorm over the global batch
    gathered    + the triplet loss over the global batch (BatchNorm local)
    both        what a cell does (sync_bn = true, the default)

The four alternate round by round (same initial weights, same batches), so that drift in the
machine's speed falls on all of them; each figure is the median over rounds of the mean step time,
and the ratio is to `local`. On a CPU the processes use gloo, on GPUs (--device cuda, one GPU per
process) NCCL. Only the timing differs between the four ways here; that they train the same as one
process is tests/test_world_size.py's job.

    flock /tmp/reidbench-heavy.lock python benchmarks/ddp_sync.py
    python benchmarks/ddp_sync.py --device cuda --backbone resnet50 --input 256x128 --batch 16x4 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import tempfile
import time
from unittest import mock

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import methods.losses
from harness.engine.dist import sync_batchnorm
from methods import create_model

WAYS = (("local", False, False), ("global BN", True, False), ("gathered", False, True), ("both", True, True))
WORLD_SIZE = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--input", default="128x64", help="HxW (default 128x64)")
    parser.add_argument("--batch", default="16x4", help="global P x K (default 16x4: 32 images per process)")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per round (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="steps before each round's timing (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each timing the four ways in turn (default 3)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < WORLD_SIZE:
        raise SystemExit(
            f"--device cuda needs {WORLD_SIZE} GPUs (one per process); this machine has {torch.cuda.device_count()}"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.spawn(_process, args=(port, vars(args), out), nprocs=WORLD_SIZE, join=True)
        with open(out) as f:
            times = json.load(f)
    base = statistics.median(times["local"])
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(
        f"baseline on {args.backbone}, input {args.input}, global batch {args.batch}, {WORLD_SIZE} processes "
        f"({'NCCL' if args.device == 'cuda' else 'gloo'}), {device}, torch {torch.__version__}; "
        f"median of {args.rounds} rounds of {args.steps} steps"
    )
    for name, _, _ in WAYS:
        seconds = statistics.median(times[name])
        print(f"{name:<10} {1000 * seconds:9.1f} ms/step   {seconds / base:5.2f}x local")


def _process(rank: int, port: int, args: dict, out: str) -> None:
    cuda = args["device"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORLD_SIZE))
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        device_id=device if cuda else None,
    )
    try:
        p, k = (int(v) for v in args["batch"].split("x"))
        h, w = (int(v) for v in args["input"].split("x"))
        local = p * k // WORLD_SIZE
        generator = torch.Generator().manual_seed(1)
        images = torch.randn(p * k, 3, h, w, generator=generator)[rank * local : (rank + 1) * local].to(device)
        pids = torch.arange(p).repeat_interleave(k)[rank * local : (rank + 1) * local].to(device)
        steppers = {name: _stepper(args["backbone"], p, sync, gather, device) for name, sync, gather in WAYS}
        times: dict[str, list[float]] = {name: [] for name in steppers}
        for _ in range(args["rounds"]):
            for name, step in steppers.items():
                for _ in range(args["warmup"]):
                    step(images, pids)
                _synchronize(device)
                start = time.perf_counter()
                for _ in range(args["steps"]):
                    step(images, pids)
                _synchronize(device)
                times[name].append((time.perf_counter() - start) / args["steps"])
        if rank == 0:
            with open(out, "w") as f:
                json.dump(times, f)
    finally:
        dist.destroy_process_group()


def _stepper(backbone: str, num_classes: int, sync_bn: bool, gather: bool, device: torch.device):
    """One training step of a fresh baseline (same initial weights for every way), DDP-wrapped."""
    torch.manual_seed(0)
    model = create_model("baseline", backbone=backbone, num_classes=num_classes, pretrained=False).to(device)
    if sync_bn:
        model = sync_batchnorm(model, device)
    trained = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(images: torch.Tensor, pids: torch.Tensor) -> None:
        # Without gathering, each process's triplet loss sees only its own slice, as before issue 14.
        local_only = mock.patch.object(methods.losses, "global_batch", lambda features, labels: (features, labels))
        with contextlib.nullcontext() if gather else local_only:
            loss = sum(model.losses(trained(images), pids).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()


if __name__ == "__main__":
    main()
