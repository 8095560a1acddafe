"""Distributed helpers across two real gloo processes.

The processes meet through a file in the test's folder (init_method="file://..."), not a TCP port:
a port found free and then bound by the workers can be taken in between by another process.
"""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Imported here, so each spawned worker has it before it joins the group: a worker that imported it
# after init_process_group died of SIGABRT at exit now and then ("terminate called without an active
# exception", after destroy_process_group; 2 in 65 runs of a loop of this file's shard test, 0 in 60
# with the import first; torch 2.14, gloo).
from harness.engine.dist import gather_shards


def _gather(rank: int, rendezvous: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        shard = torch.full((3 if rank == 0 else 2, 4), float(rank + 1))  # 5 items: 3 on rank 0, 2 on rank 1
        out = gather_shards(shard, 5)
        assert out.shape == (5, 4) and out.device == shard.device
        assert out[:3].eq(1).all() and out[3:].eq(2).all(), out
        # Both ranks are done before either tears the group down: with a file store, a rank that
        # destroyed its group while the other still finished the all-gather once died of SIGABRT
        # ("terminate called without an active exception", torch 2.14, CI of 2026-12-07).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_gather_shards_concatenates_uneven_shards_in_rank_order(tmp_path):
    mp.spawn(_gather, args=(str(tmp_path / "rendezvous"),), nprocs=2)


def _short_shard(rank: int, rendezvous: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        shard = torch.ones(3 if rank == 0 else 1, 4)  # rank 1 lost an image: 1 row where 2 are its share of 5
        try:
            gather_shards(shard, 5)
        except RuntimeError as err:
            assert "rank 1: 1 rows, 2 expected" in str(err), err  # on both ranks, before any row is gathered
        else:
            raise AssertionError("a short shard was padded silently")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_gather_shards_refuses_a_shard_of_the_wrong_size_on_every_rank(tmp_path):
    mp.spawn(_short_shard, args=(str(tmp_path / "rendezvous"),), nprocs=2)


def _global_batch_worker(rank: int, port: int, out: str) -> None:
    """Rank `rank` of 2 trains on its half of a batch as DDP would (each rank's loss is the mean over its
    own images, gradients averaged); rank 0 writes what it saw, and the one-process reference."""
    import json

    from harness.engine.dist import sync_batchnorm
    from methods.losses import batch_hard_triplet

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:

        def setup():
            torch.manual_seed(0)
            # a layer before the BatchNorm: its gradient reaches it through the batch statistics too
            conv, bn, head = torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Linear(3 * 4 * 4, 5)
            x = torch.randn(8, 3, 4, 4) * 3 + 1
            pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
            return torch.nn.Sequential(conv, bn), head, x, pids

        def loss_of(body, head, x, pids):
            features = head(body(x).flatten(1))
            return batch_hard_triplet(features, pids, 0.3) + features.square().mean()

        body, head, x, pids = setup()
        body = sync_batchnorm(body, torch.device("cpu"))
        bn = body[1]
        half = slice(4 * rank, 4 * rank + 4)
        loss = loss_of(body, head, x[half], pids[half])
        loss.backward()
        params = [*body.parameters(), *head.parameters()]
        grads = [p.grad.clone() for p in params]
        for g in grads:  # what DDP does to the gradients
            dist.all_reduce(g)
            g /= 2
        losses = [torch.zeros(()) for _ in range(2)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            dist.destroy_process_group()  # the reference runs as a world of one
            ref_body, ref_head, x, pids = setup()
            ref_loss = loss_of(ref_body, ref_head, x, pids)
            ref_loss.backward()
            ref = [*ref_body.parameters(), *ref_head.parameters()]
            ref_bn = ref_body[1]
            result = {
                "loss": [float(sum(losses) / 2), float(ref_loss)],
                "grads": [float((g - r.grad).abs().max()) for g, r in zip(grads, ref)],
                "running": [
                    float((bn.running_mean - ref_bn.running_mean).abs().max()),
                    float((bn.running_var - ref_bn.running_var).abs().max()),
                ],
                "converted": type(bn).__name__,
            }
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_global_batchnorm_and_gathered_triplet_give_the_one_process_step(tmp_path):
    # Two gloo processes, each with half of a batch of 8 (2 identities each): BatchNorm statistics over
    # all 8 and batch-hard mining over all 8, with DDP's gradient average, equal one process on the 8.
    import json

    with socket.socket() as s:  # rank 0 leaves the group midway to run the one-process reference
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.json"
    mp.spawn(_global_batch_worker, args=(port, str(out)), nprocs=2)
    result = json.loads(out.read_text())
    assert result["converted"] == "GlobalBatchNorm"
    distributed, alone = result["loss"]
    assert abs(distributed - alone) <= 1e-5 * abs(alone), result
    assert max(result["grads"]) <= 1e-5, result
    assert max(result["running"]) <= 1e-5, result
