"""Distributed helpers across two real gloo processes."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _gather(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        from harness.dist import gather_shards

        shard = torch.full((3 if rank == 0 else 2, 4), float(rank + 1))  # 5 items: 3 on rank 0, 2 on rank 1
        out = gather_shards(shard, 5)
        assert out.shape == (5, 4) and out.device == shard.device
        assert out[:3].eq(1).all() and out[3:].eq(2).all(), out
    finally:
        dist.destroy_process_group()


def test_gather_shards_concatenates_uneven_shards_in_rank_order():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gather, args=(port,), nprocs=2)
