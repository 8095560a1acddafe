"""Losses shared by the methods.

A loss that couples the images of a batch sees the whole global batch under DDP: each process holds
a slice of it (harness/data/sampler.py), and mining over the slice alone would make a 4-GPU run
mine among a quarter of the images a 1-GPU run does (SCSN: "mini-batch sampled to the triplet loss
consists of B = P·I images", 192, not 48 per GPU).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F


def batch_hard_triplet(features: torch.Tensor, pids: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet loss with batch-hard mining (Hermans et al. 2017) on Euclidean distances.

    For each anchor: its farthest positive and its nearest negative within the batch. Under DDP
    (a process group of more than one) the batch is the global one: every rank's features and
    labels are gathered, the features with their gradients, and this rank's anchors are mined
    against all of them. The loss is the mean over this rank's anchors; DDP averages the gradients
    over the ranks' equal slices, so the step equals one process's step on the whole batch.
    """
    candidates, candidate_pids = global_batch(features, pids)
    dist_matrix = torch.cdist(features, candidates).clamp_min(1e-12)
    same = pids[:, None] == candidate_pids[None, :]
    hardest_pos = dist_matrix.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_neg = dist_matrix.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def global_batch(features: torch.Tensor, pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's features (differentiable: gradients flow back to the rank that computed them)
    and labels, in rank order, which is the global batch's order; this rank's alone without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, pids
    with warnings.catch_warnings():  # torch 2.14 deprecates it; its replacement needs reduce-scatter, which gloo lacks
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional", category=FutureWarning)
        gathered = dist_nn.all_gather(features.contiguous())
    labels = [torch.empty_like(pids) for _ in range(dist.get_world_size())]
    dist.all_gather(labels, pids.contiguous())
    return torch.cat(gathered), torch.cat(labels)


def identity_loss(logits: torch.Tensor, pids: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy over identities, with label smoothing (Szegedy et al. 2016) when > 0."""
    return F.cross_entropy(logits, pids, label_smoothing=label_smoothing)
