"""Several models trained side by side and combined at test time by l2-normalised concatenation.

SSP-ReID trains its two subnets "separately" and joins their features at test; SPReID's
"combined" row is the "l2-normalization+concatenation" of two separately trained models. One cell
realises this as one module holding the members: each step feeds every member the same batch, and
the loss is the plain sum of the members' own terms, so each member's parameters receive exactly
the gradient of its own losses (no term reads two members), as if it were trained alone on these
batches: Adam and SGD update each parameter from its own gradient. The one coupling is a global
gradient-norm clip ([train] grad_clip), which scales all members by their joint norm. Only the
test-time embedding joins them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SideBySide(nn.Module):
    def __init__(self, members: dict[str, nn.Module]):
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.train_cues = tuple(dict.fromkeys(c for m in members.values() for c in m.train_cues))
        self.test_cues = tuple(dict.fromkeys(c for m in members.values() for c in m.test_cues))
        self.embedding_dim = sum(m.embedding_dim for m in members.values())

    def forward(self, images: torch.Tensor, cues: dict[str, torch.Tensor] | None = None):
        outputs = {name: _call(member, images, cues, self.training) for name, member in self.members.items()}
        if not self.training:
            return torch.cat([F.normalize(out.float(), dim=1) for out in outputs.values()], dim=1)
        return {f"{name}_{key}": value for name, out in outputs.items() for key, value in out.items()}

    def losses(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {}
        for name, member in self.members.items():
            own = {key.removeprefix(f"{name}_"): value for key, value in outputs.items() if key.startswith(f"{name}_")}
            terms.update({f"{name}_{term}": value for term, value in member.losses(own, pids).items()})
        return terms


def _call(member: nn.Module, images: torch.Tensor, cues: dict[str, torch.Tensor] | None, training: bool):
    needed = member.train_cues if training else member.test_cues
    return member(images, {c: cues[c] for c in needed}) if needed else member(images)
