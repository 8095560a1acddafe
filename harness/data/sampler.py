"""Training batches that are the same global batches on any number of ranks: P x K or uniform.

`PKBatchSampler` (``[train] sampler = "pk"``, the default): each step draws P identities from a
per-cycle permutation of the training identities (a cycle is ⌊identities / P⌋ steps, every
identity at most once) and K images of each. `UniformBatchSampler` (``sampler = "uniform"``): each
step takes the next P·K images of a per-cycle permutation of the training images (a cycle is
⌊images / (P·K)⌋ steps, every image at most once, the rest dropped), as a shuffled DataLoader with
``drop_last=True`` does; only the product P·K counts. Either way one global batch depends only on
(seed, step). Rank r of a DDP job takes the r-th of world_size equal contiguous slices of it, so
the ranks together always train on the batch a single process would, and a resumed run continues
exactly where it stopped. Each image also gets a seed of its own from (seed, step, its position in
the global batch), which the loaders use for its augmentation: an image is flipped, cropped and
erased alike whichever rank processes it.

How many steps make an epoch is the recipe's `epoch_unit` (see `epoch_steps`); the sampler's own
permutation cycle does not depend on it. With the uniform sampler an epoch is a pass over the
images (the spec refuses `epoch_unit = "identities"` with it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

_AUGMENTATION_STREAM = 7  # keeps the per-image seeds apart from the draws of identities and images
_UNIFORM_STREAM = 11  # keeps the uniform sampler's permutations apart from the P x K sampler's


def epoch_steps(unit: str, *, num_images: int, num_ids: int, ids_per_batch: int, images_per_id: int) -> int:
    """Steps per epoch: ⌊training images / (P·K)⌋ for "images", ⌊identities / P⌋ for "identities".

    "images" is what the toolkits the papers were built on count. FastReID: ``iters_per_epoch =
    len(data_loader.dataset) // cfg.SOLVER.IMS_PER_BATCH`` (fastreid/engine/defaults.py); Bag of
    Tricks' and torchreid's ``RandomIdentitySampler`` yields about every training image once per
    epoch (each identity's images in chunks of K). "identities" is one pass over the identities,
    K images each: MGN-style samplers and deep-person-reid's 2018 ``RandomIdentitySampler``, whose
    ``__len__`` is identities x K images.
    """
    if unit == "images":
        return num_images // (ids_per_batch * images_per_id)
    if unit == "identities":
        return num_ids // ids_per_batch
    raise ValueError(f"unknown epoch_unit {unit!r}; supported: images, identities")


class GlobalBatchSampler:
    """What both samplers share: the steps to run, this rank's slice of each global batch and the
    images' augmentation seeds. A subclass gives `global_batch(step)`."""

    def __init__(self, *, batch_size: int, steps: int, seed: int, rank: int, world_size: int, start_step: int):
        if batch_size % world_size:
            raise ValueError(
                f"the global batch of {batch_size} images must split evenly over the world size ({world_size})"
            )
        self.steps, self.seed = steps, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        self.local = batch_size // world_size  # images per rank and step

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            yield self.batch(step)

    @property
    def description(self) -> str:
        """What a batch is, for the training log."""
        raise NotImplementedError

    def global_batch(self, step: int) -> list[int]:
        """Every rank's sample indices for global step `step`, in rank order."""
        raise NotImplementedError

    def batch(self, step: int) -> list[int]:
        """This rank's sample indices for global step `step`: its slice of the global batch."""
        return self.global_batch(step)[self.rank * self.local : (self.rank + 1) * self.local]

    def image_seeds(self, step: int) -> list[int]:
        """A seed for each image of this rank's slice, from (seed, step, position in the global batch)."""
        first = self.rank * self.local
        return [
            int(np.random.SeedSequence([self.seed, _AUGMENTATION_STREAM, step, first + i]).generate_state(1)[0])
            for i in range(self.local)
        ]


class PKBatchSampler(GlobalBatchSampler):
    def __init__(
        self,
        pids: Sequence[int],
        *,
        ids_per_batch: int,
        images_per_id: int,
        steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ):
        indices: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            indices.setdefault(int(pid), []).append(index)
        self.by_pid = {pid: np.asarray(idx) for pid, idx in sorted(indices.items())}
        self.pid_list = np.asarray(list(self.by_pid))
        if (ids_per_batch * images_per_id) % world_size:
            raise ValueError(
                f"the global batch of {ids_per_batch} x {images_per_id} images must split evenly over "
                f"the world size ({world_size})"
            )
        if ids_per_batch > len(self.pid_list):
            raise ValueError(f"ids_per_batch ({ids_per_batch}) exceeds the {len(self.pid_list)} training identities")
        super().__init__(
            batch_size=ids_per_batch * images_per_id,
            steps=steps,
            seed=seed,
            rank=rank,
            world_size=world_size,
            start_step=start_step,
        )
        self.p, self.k = ids_per_batch, images_per_id

    @property
    def steps_per_cycle(self) -> int:
        """Steps before the identities are permuted again (each drawn at most once in between)."""
        return len(self.pid_list) // self.p

    @property
    def description(self) -> str:
        return f"{self.p} identities x {self.k} images (P x K)"

    def global_batch(self, step: int) -> list[int]:
        cycle, position = divmod(step, self.steps_per_cycle)
        order = np.random.default_rng([self.seed, cycle]).permutation(self.pid_list)
        step_ids = order[position * self.p : (position + 1) * self.p]
        # The trailing 0 was the rank when each rank drew its own images: a one-process run keeps its batches.
        rng = np.random.default_rng([self.seed, cycle, position, 0])
        batch = []
        for pid in step_ids:
            pool = self.by_pid[int(pid)]
            batch.extend(rng.choice(pool, size=self.k, replace=len(pool) < self.k).tolist())
        return batch


class UniformBatchSampler(GlobalBatchSampler):
    """Batches of `batch_size` images drawn uniformly without replacement: the training images in a
    new random order every cycle of ⌊images / batch_size⌋ steps, the incomplete last batch dropped.

    A shuffled loader, as the SSP-ReID authors trained their cross-entropy-only backbones with
    (train_img_model_xent.py: ``DataLoader(..., batch_size=args.train_batch, shuffle=True,
    drop_last=True)``) and SPReID's authors their Chainer iterator (``shuffle=True`` over images).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ):
        if batch_size > num_samples:
            raise ValueError(f"the batch of {batch_size} images exceeds the {num_samples} training images")
        super().__init__(
            batch_size=batch_size, steps=steps, seed=seed, rank=rank, world_size=world_size, start_step=start_step
        )
        self.num_samples, self.batch_size = num_samples, batch_size

    @property
    def steps_per_cycle(self) -> int:
        """Steps before the images are permuted again (each drawn at most once in between)."""
        return self.num_samples // self.batch_size

    @property
    def description(self) -> str:
        return f"{self.batch_size} images drawn uniformly, {self.steps_per_cycle} steps a pass over the images"

    def global_batch(self, step: int) -> list[int]:
        cycle, position = divmod(step, self.steps_per_cycle)
        order = np.random.default_rng([self.seed, _UNIFORM_STREAM, cycle]).permutation(self.num_samples)
        return order[position * self.batch_size : (position + 1) * self.batch_size].tolist()


def batch_sampler(
    kind: str,
    pids: Sequence[int],
    *,
    ids_per_batch: int,
    images_per_id: int,
    steps: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
) -> GlobalBatchSampler:
    """The recipe's sampler ("pk" or "uniform", `[train] sampler`) over samples of identities `pids`."""
    common = {"steps": steps, "seed": seed, "rank": rank, "world_size": world_size, "start_step": start_step}
    if kind == "pk":
        return PKBatchSampler(pids, ids_per_batch=ids_per_batch, images_per_id=images_per_id, **common)
    if kind == "uniform":
        return UniformBatchSampler(len(pids), batch_size=ids_per_batch * images_per_id, **common)
    raise ValueError(f"unknown sampler {kind!r}; supported: pk, uniform")
