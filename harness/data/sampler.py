"""P x K batches (P identities, K images each), split across the ranks of a DDP job.

Each step draws P identities from a per-epoch permutation; rank r takes every world-th of them,
so the ranks see disjoint identities in the same step and together make one global P x K batch.
The sequence depends only on (seed, step), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def steps_per_epoch(num_ids: int, ids_per_batch: int) -> int:
    """An epoch draws every identity at most once."""
    return num_ids // ids_per_batch


class PKBatchSampler:
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
        if ids_per_batch % world_size:
            raise ValueError(f"ids_per_batch ({ids_per_batch}) must be divisible by the world size ({world_size})")
        if ids_per_batch > len(self.pid_list):
            raise ValueError(f"ids_per_batch ({ids_per_batch}) exceeds the {len(self.pid_list)} training identities")
        self.p, self.k, self.steps, self.seed = ids_per_batch, images_per_id, steps, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.pid_list), self.p)

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            yield self.batch(step)

    def batch(self, step: int) -> list[int]:
        """This rank's sample indices for global step `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.pid_list)
        step_ids = order[position * self.p : (position + 1) * self.p]
        rng = np.random.default_rng([self.seed, epoch, position, self.rank])
        batch = []
        for pid in step_ids[self.rank :: self.world_size]:
            pool = self.by_pid[int(pid)]
            batch.extend(rng.choice(pool, size=self.k, replace=len(pool) < self.k).tolist())
        return batch
