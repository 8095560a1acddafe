"""Distributed set-up from whatever launched us: torchrun / elastic_launch, SLURM or Ray.

All of them export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a process started
without them is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group (NCCL on GPUs, gloo on CPUs) and pick this process's device."""
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
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=chosen if use_cuda else None)
    return DistEnv(rank, world_size, local_rank, chosen)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def gather_shards(shard: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate every rank's contiguous shard (see data.loader.shard_loader) in rank order."""
    if not dist.is_initialized():
        return shard
    world_size = dist.get_world_size()
    per_rank = -(-total // world_size)
    # NCCL gathers only GPU tensors: the shards travel on this rank's device, and come back where they were.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else shard.device
    padded = shard.new_zeros((per_rank, *shard.shape[1:]), device=device)
    padded[: len(shard)] = shard
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:total].to(shard.device)
