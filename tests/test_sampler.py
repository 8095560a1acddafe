"""The distributed P x K and uniform samplers and what an epoch is."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.sampler import PKBatchSampler, UniformBatchSampler, batch_sampler, epoch_steps

PIDS = [pid for pid in range(10) for _ in range(3 + pid % 4)]  # 10 identities, 3 to 6 images each


def sampler(rank=0, world_size=1, steps=12, start_step=0, seed=5):
    return PKBatchSampler(
        PIDS,
        ids_per_batch=4,
        images_per_id=4,
        steps=steps,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_step=start_step,
    )


def test_batches_are_p_identities_times_k_images():
    for batch in sampler():
        pids = np.asarray(PIDS)[batch]
        values, counts = np.unique(pids, return_counts=True)
        assert len(values) == 4 and set(counts) == {4}


def test_ranks_take_equal_slices_of_the_one_process_batches():
    alone = list(sampler())
    for world_size in (2, 4, 8):
        ranks = [list(sampler(rank=r, world_size=world_size)) for r in range(world_size)]
        assert all(len(r) == 12 for r in ranks)
        for step, parts in enumerate(zip(*ranks)):
            assert [len(p) for p in parts] == [16 // world_size] * world_size
            assert sum(parts, []) == alone[step], f"world size {world_size}, step {step}: not one process's batch"


def test_each_image_gets_the_seed_of_its_place_in_the_global_batch():
    alone = [sampler().image_seeds(step) for step in range(3)]
    for world_size in (2, 4):
        for step in range(3):
            assert (
                sum((sampler(rank=r, world_size=world_size).image_seeds(step) for r in range(world_size)), [])
                == alone[step]
            )
    assert len(set(alone[0])) == 16 and alone[0] != alone[1] != sampler(seed=6).image_seeds(1)


def test_sequence_is_deterministic_and_resumable():
    full = list(sampler())
    assert full == list(sampler())
    assert list(sampler(start_step=7)) == full[7:]
    assert full != list(sampler(seed=6))


def test_a_cycle_covers_identities_without_repeats():
    s = sampler()
    seen = [pid for batch in list(s)[: s.steps_per_cycle] for pid in set(np.asarray(PIDS)[batch])]
    assert len(seen) == len(set(seen)) == s.steps_per_cycle * 4


@pytest.mark.parametrize("unit,steps", [("images", 202), ("identities", 46)])
def test_an_epoch_of_market1501_at_16_x_4(unit, steps):
    # GASM on Market-1501 (12,936 training images of 751 identities, 16 x 4): FastReID's epoch is
    # len(dataset) // IMS_PER_BATCH = 202 steps, 120 epochs 24,240; one pass over the identities is 46.
    assert epoch_steps(unit, num_images=12936, num_ids=751, ids_per_batch=16, images_per_id=4) == steps
    with pytest.raises(ValueError, match="unknown epoch_unit 'pictures'"):
        epoch_steps("pictures", num_images=1, num_ids=1, ids_per_batch=1, images_per_id=1)


def test_bad_compositions_are_refused():
    PKBatchSampler(PIDS, ids_per_batch=3, images_per_id=4, steps=1, seed=0, world_size=2)  # 12 images split evenly
    with pytest.raises(ValueError, match="must split evenly over the world size"):
        PKBatchSampler(PIDS, ids_per_batch=3, images_per_id=3, steps=1, seed=0, world_size=2)
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
                json.dump({"steps": steps, "counts": counts, "per_cycle": s.steps_per_cycle}, f)
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_draw_disjoint_identities_for_the_same_steps(tmp_path):
    # P = 4 over 2 ranks, K = 3: each rank's slice of 6 images is 2 whole identities.
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
    cycle = [pid for a, b in result["steps"][: result["per_cycle"]] for pid in set(a) | set(b)]
    assert len(cycle) == len(set(cycle)), "a cycle draws each identity at most once, over all ranks"
    assert runs[1] == result, "the sequence is deterministic by seed"


def uniform(rank=0, world_size=1, steps=12, start_step=0, seed=5):
    return batch_sampler(
        "uniform",
        PIDS,
        ids_per_batch=2,
        images_per_id=4,
        steps=steps,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_step=start_step,
    )


def test_uniform_batches_pass_over_the_images_once_per_epoch():
    """A shuffled loader with drop_last: every ⌊43 / 8⌋ = 5 steps each image at most once, 40 of the 43."""
    assert len(PIDS) == 43 and isinstance(uniform(), UniformBatchSampler)
    steps = epoch_steps("images", num_images=len(PIDS), num_ids=10, ids_per_batch=2, images_per_id=4)
    batches = list(uniform())
    assert steps == uniform().steps_per_cycle == 5 and all(len(b) == 8 for b in batches)
    for cycle in (batches[:5], batches[5:10]):
        seen = sum(cycle, [])
        assert len(set(seen)) == 40  # no image twice within an epoch
    assert set(sum(batches[:5], [])) != set(sum(batches[5:10], []))  # each epoch its own order and its own 5 left out
    # not identity batches: images of an identity land in a batch as the shuffle puts them
    assert any(len(set(np.asarray(PIDS)[b])) > 2 for b in batches)


def test_uniform_batches_are_one_processs_on_any_world_size_and_resumable():
    alone = list(uniform())
    for world_size in (2, 4, 8):
        ranks = [list(uniform(rank=r, world_size=world_size)) for r in range(world_size)]
        for step, parts in enumerate(zip(*ranks)):
            assert sum(parts, []) == alone[step], f"world size {world_size}, step {step}"
        assert sum((uniform(rank=r, world_size=world_size).image_seeds(3) for r in range(world_size)), []) == (
            uniform().image_seeds(3)
        )
    assert alone == list(uniform()) and list(uniform(start_step=7)) == alone[7:] and alone != list(uniform(seed=6))


def test_the_sampler_is_the_recipes_choice():
    common = {"ids_per_batch": 4, "images_per_id": 4, "steps": 3, "seed": 0}
    assert isinstance(batch_sampler("pk", PIDS, **common), PKBatchSampler)
    with pytest.raises(ValueError, match="unknown sampler 'random'; supported: pk, uniform"):
        batch_sampler("random", PIDS, **common)
    with pytest.raises(ValueError, match="the batch of 64 images exceeds the 43 training images"):
        batch_sampler("uniform", PIDS, **{**common, "ids_per_batch": 16})


def test_the_training_log_says_what_a_batch_is():
    assert sampler().description == "4 identities x 4 images (P x K)"
    assert uniform().description == "8 images drawn uniformly, 5 steps a pass over the images"
