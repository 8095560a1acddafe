"""Distributed set-up from whatever launched us: torchrun / elastic_launch, SLURM or Ray.

All of them export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a process started
without them is a world of one. Joining the process group waits at most the spec's
`[resources] collective_timeout`; a rank that cannot join says so in one line (JoinError), naming
itself, its node and what to check, instead of hanging. `sync_batchnorm` makes BatchNorm see the
global batch (see there).
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from harness.errors import UserError


class JoinError(RuntimeError):
    """This rank could not join its cell's process group (the message is one line for the user)."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def node_name() -> str:
    """The name of the node this process runs on, as its launcher knows it.

    SLURM names each node (SLURMD_NODENAME: the hostname on a real cluster, and distinct for two
    slurmd on one machine); Ray's worker loop sets REIDBENCH_NODE to the hostname and the Ray
    node's address; anything else is the hostname.
    """
    return os.environ.get("SLURMD_NODENAME") or os.environ.get("REIDBENCH_NODE") or socket.gethostname()


def resolve_device(name: str) -> torch.device:
    """A command's --device (auto, cpu or cuda) as a torch device; a user error for cuda without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: use auto, cpu or cuda.")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible here.")
    return torch.device(name)


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join the process group (NCCL on GPUs, gloo on CPUs) and pick this process's device.

    `timeout_minutes` bounds the join and, afterwards, every collective (the backends' own timeout).
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the spec asks for device = 'cuda' but this machine has no usable CUDA GPU")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    chosen = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    # REIDBENCH_PROCESS_GROUP=always ([env]) forms the group for a world of one too: the collectives
    # (NCCL on a GPU) then run on one GPU, as benchmarks/gpu_check.sh checks.
    grouped = world_size > 1 or (os.environ.get("REIDBENCH_PROCESS_GROUP") == "always" and "MASTER_ADDR" in os.environ)
    if grouped and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        try:
            dist.init_process_group(
                backend, device_id=chosen if use_cuda else None, timeout=timedelta(minutes=timeout_minutes)
            )
        except Exception as err:  # DistStoreError, DistNetworkError, ValueError (a bad address), RuntimeError
            raise JoinError(join_problem(rank, world_size, backend, timeout_minutes, err)) from err
    return DistEnv(rank, world_size, local_rank, chosen)


def join_problem(rank: int, world_size: int, backend: str, timeout_minutes: float, err: BaseException) -> str:
    """One line: which rank on which node could not join where, why, and what to check."""
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    cause = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return (
        f"rank {rank} of {world_size} on host {node_name()} could not join the {backend} process group at {where} "
        f"within {timeout_minutes:g} min ({type(err).__name__}: {cause}); check that every node reaches {where} "
        f"(firewall; the network interface: NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME in the spec's [env]) and "
        f"that every rank started (each rank's log)"
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them at the
    start of each forward, so after the last step each rank holds its own last update: without this,
    each rank would extract its shard of the test set with slightly different statistics, and the
    kept model (rank 0's) would not be the one that was evaluated."""
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        if dist.get_backend() == "nccl" and not buffer.is_cuda:
            continue
        dist.broadcast(buffer.data, src=0)


def gather_shards(shard: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate every rank's contiguous shard (see data.loader.shard_loader) in rank order.

    Each rank's row count is checked first, on every rank: a shard shorter or longer than its share
    of `total` would otherwise be padded or cut silently, and its images scored as another's."""
    if not dist.is_initialized():
        if len(shard) != total:
            raise RuntimeError(f"gather_shards: {len(shard)} rows extracted, {total} expected")
        return shard
    world_size = dist.get_world_size()
    per_rank = -(-total // world_size)
    # NCCL gathers only GPU tensors: the shards travel on this rank's device, and come back where they were.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else shard.device
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size)]
    dist.all_gather(counts, torch.tensor([len(shard)], dtype=torch.int64, device=device))
    expected = [max(0, min(per_rank, total - rank * per_rank)) for rank in range(world_size)]
    wrong = [
        f"rank {rank}: {int(c)} rows, {e} expected" for rank, (c, e) in enumerate(zip(counts, expected)) if int(c) != e
    ]
    if wrong:
        raise RuntimeError(f"gather_shards: shards of the wrong size ({'; '.join(wrong)}) for {total} rows")
    padded = shard.new_zeros((per_rank, *shard.shape[1:]), device=device)
    padded[: len(shard)] = shard
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:total].to(shard.device)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of `model` normalised with the statistics of the global batch.

    Each rank holds a slice of the global P x K batch (harness/data/sampler.py); BatchNorm over the
    slice would normalise with other statistics than one process does, and results would depend on
    the GPU count (fast-reid issue 54: "use syncBN"). On GPUs this is torch's SyncBatchNorm. Its
    forward refuses CPU tensors, so on the CPU (gloo) the layers become GlobalBatchNorm, which
    all-reduces the batch moments with an autograd-aware collective. Parameters and buffers are
    carried over (the same objects: an optimizer built before keeps working), so state dicts and
    checkpoints are those of the plain model.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, _BatchNorm) and not isinstance(model, GlobalBatchNorm):
        return GlobalBatchNorm.from_batchnorm(model)
    for name, child in model.named_children():
        converted = sync_batchnorm(child, device)
        if converted is not child:
            setattr(model, name, converted)
    return model


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training-time statistics are those of the whole DDP batch, on the CPU.

    Each rank computes its slice's per-channel mean and variance (torch.var_mean, one pass), turns
    them into sums of x and x² in float64 (so that the global variance E[x²] - E[x]² loses nothing
    to cancellation) and all-reduces those with its count in one collective of 2C + 1 numbers. The
    collective is `torch.distributed.nn.functional.all_reduce`, whose backward all-reduces the
    gradients, so each rank's loss reaches every rank's inputs through the shared statistics, as in
    torch's SyncBatchNorm. Running statistics are updated with the unbiased global variance, as
    BatchNorm does over one batch. In evaluation, or in a world of one, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> GlobalBatchNorm:
        out = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            out.weight, out.bias = bn.weight, bn.bias
        out.running_mean, out.running_var, out.num_batches_tracked = (
            bn.running_mean,
            bn.running_var,
            bn.num_batches_tracked,
        )
        out.train(bn.training)
        return out

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        local_var, local_mean = torch.var_mean(input, dims, correction=0)
        local_mean, count = local_mean.double(), input.numel() // c
        moments = all_reduce_with_grad(
            torch.cat(
                [
                    local_mean * count,
                    (local_var.double() + local_mean.square()) * count,
                    local_mean.new_full((1,), count),
                ]
            )
        )
        n = moments[-1]
        mean = moments[:c] / n
        var = (moments[c : 2 * c] / n - mean.square()).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0.0)
        shape = (1, c) + (1,) * (input.dim() - 2)  # one fused pass: x * scale + shift, per channel
        return torch.addcmul(shift.to(input.dtype).view(shape), input, scale.to(input.dtype).view(shape))


def all_reduce_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over ranks, differentiable: the backward sums the gradients over ranks.

    torch 2.14 marks torch.distributed.nn.functional deprecated in favour of the functional
    collectives, whose autograd needs reduce-scatter, which gloo lacks; the warning is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional", category=FutureWarning)
        return dist_nn.all_reduce(tensor)
