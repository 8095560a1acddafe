"""The distributed P x K sampler."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.sampler import PKBatchSampler

PIDS = [pid for pid in range(10) for _ in range(3 + pid % 4)]  # 10 identities, 3 to 6 images each


def sampler(rank=0, world_size=1, steps=12, start_step=0, seed=5):
    return PKBatchSampler(PIDS, ids_per_batch=4, images_per_id=4, steps=steps, seed=seed,
                          rank=rank, world_size=world_size, start_step=start_step)


def test_batches_are_p_identities_times_k_images():
    for batch in sampler():
        pids = np.asarray(PIDS)[batch]
        values, counts = np.unique(pids, return_counts=True)
        assert len(values) == 4 and set(counts) == {4}


def test_ranks_draw_disjoint_identities_and_run_the_same_steps():
    ranks = [list(sampler(rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 12
    for a, b in zip(*ranks):
        ids_a, ids_b = set(np.asarray(PIDS)[a]), set(np.asarray(PIDS)[b])
        assert len(ids_a) == len(ids_b) == 2 and not ids_a & ids_b


def test_sequence_is_deterministic_and_resumable():
    full = list(sampler())
    assert full == list(sampler())
    assert list(sampler(start_step=7)) == full[7:]
    assert full != list(sampler(seed=6))


def test_an_epoch_covers_identities_without_repeats():
    s = sampler()
    seen = [pid for batch in list(s)[: s.steps_per_epoch] for pid in set(np.asarray(PIDS)[batch])]
    assert len(seen) == len(set(seen)) == s.steps_per_epoch * 4


def test_bad_compositions_are_refused():
    with pytest.raises(ValueError, match="divisible by the world size"):
        PKBatchSampler(PIDS, ids_per_batch=3, images_per_id=4, steps=1, seed=0, world_size=2)
    with pytest.raises(ValueError, match="exceeds the 10 training identities"):
        PKBatchSampler(PIDS, ids_per_batch=12, images_per_id=4, steps=1, seed=0)


def _rank_batches(rank: int, world_size: int, init_file: str, out: str) -> None:
    """One DDP process (gloo): draw every step's batch and gather the identities of all ranks."""
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        s = PKBatchSampler(PIDS, ids_per_batch=4, images_per_id=3, steps=10, seed=11, rank=rank, world_size=world_size)
        steps = []
        for batch in s:
            gathered = [None] * world_size
            dist.all_gather_object(gathered, sorted(int(p) for p in np.asarray(PIDS)[batch]))
            steps.append(gathered)
        counts = [None] * world_size
        dist.all_gather_object(counts, len(steps))
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"steps": steps, "counts": counts, "per_epoch": s.steps_per_epoch}, f)
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_draw_disjoint_identities_for_the_same_steps(tmp_path):
    import json

    import torch.multiprocessing as mp

    runs = []
    for attempt in range(2):
        out = tmp_path / f"out{attempt}.json"
        mp.spawn(_rank_batches, args=(2, str(tmp_path / f"init{attempt}"), str(out)), nprocs=2, join=True)
        runs.append(json.loads(out.read_text()))
    result = runs[0]
    assert result["counts"] == [10, 10], "every rank runs the same number of steps"
    for step, (a, b) in enumerate(result["steps"]):
        assert len(set(a)) == len(set(b)) == 2 and len(a) == len(b) == 6, "P/world identities x K images per rank"
        assert not set(a) & set(b), f"step {step}: ranks share an identity"
    epoch = [pid for a, b in result["steps"][: result["per_epoch"]] for pid in set(a) | set(b)]
    assert len(epoch) == len(set(epoch)), "an epoch draws each identity at most once, over all ranks"
    assert runs[1] == result, "the sequence is deterministic by seed"
