"""Losses shared by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet(features: torch.Tensor, pids: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet loss with batch-hard mining (Hermans et al. 2017) on Euclidean distances.

    For each anchor: its farthest positive and its nearest negative within the batch.
    """
    dist = torch.cdist(features, features).clamp_min(1e-12)
    same = pids[:, None] == pids[None, :]
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def identity_loss(logits: torch.Tensor, pids: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy over identities, with label smoothing (Szegedy et al. 2016) when > 0."""
    return F.cross_entropy(logits, pids, label_smoothing=label_smoothing)
