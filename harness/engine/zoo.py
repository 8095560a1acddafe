"""Weights trained elsewhere: read a checkpoint file and map its keys onto reidbench's baseline.

`reidbench eval --weights PATH --method baseline --backbone resnet50` evaluates the BNNeck ResNet-50
models of the re-ID model zoos. Their state dicts name the same tensors differently:

- fast-reid (`Baseline` meta-architecture, ResNet backbone, `EmbeddingHead` with BNNeck): the
  checkpoint is ``{"model": state_dict, ...}``; the backbone's torchvision names sit under
  ``backbone.`` (``backbone.conv1.weight``, ``backbone.layer4.2.bn3.running_var``), the BNNeck is
  ``heads.bottleneck.0.*`` and the classifier ``heads.weight`` (``heads.classifier.weight`` in older
  releases); ``pixel_mean``/``pixel_std`` are input normalisation buffers, left out (reidbench
  normalises with the same ImageNet statistics in its transforms).
- torchreid (deep-person-reid): ``{"state_dict": ..., "epoch": ...}`` with the torchvision names at
  the top level (``conv1.weight``, ``layer1.0.conv1.weight``), often under ``module.`` (saved from
  DataParallel), a BNNeck as ``bnneck.*`` or ``bottleneck.*`` when the model has one, and
  ``classifier.weight`` (with a bias, which reidbench's classifier has not; the classifier is not
  used at test time). Its plain ``resnet50`` has no BNNeck: its test feature is the pooled one, so
  the BNNeck is filled with the identity (weight 1, bias 0, mean 0, variance 1), which keeps the
  embedding's ranking; the rows say so.
- reid-strong-baseline (Luo et al.'s code, the BNNeck's origin): ``base.`` + ``bottleneck.*`` + ``classifier.weight``.

A reidbench model.safetensors is taken as it is. Files are read without running pickled code:
safetensors, or torch.load with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.engine.artefact import read_weights
from harness.errors import UserError
from harness.spec import Cell

_BACKBONE = re.compile(r"^(conv1|bn1|layer[1-4])\.")
_STEM = {"conv1.": "backbone.stem.0.", "bn1.": "backbone.stem.1."}


@dataclass(frozen=True)
class ExternalCell(Cell):
    """The identity of rows from external weights: what a cell would be, plus the weights' hash,
    so two weight files never share a cell id. Such rows never count as a training run."""

    weights_sha256: str = ""

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "weights_sha256": self.weights_sha256}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (safetensors, or a torch file read with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file.")
    if path.suffix == ".safetensors":
        return read_weights(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (pickle, zip and torch raise many kinds)
        raise UserError(
            f"--weights {path} is damaged, or not a PyTorch checkpoint that loads without running code "
            f"({type(err).__name__}: {err}). Give a state dict saved with torch.save, or a .safetensors file."
        ) from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(saved, dict) and isinstance(saved.get(key), dict):
            saved = saved[key]
            break
    tensors = {k: v for k, v in saved.items() if isinstance(v, torch.Tensor)} if isinstance(saved, dict) else {}
    if not tensors:
        raise UserError(
            f"--weights {path} holds no state dict (looked at the top level and under 'model' and 'state_dict')."
        )
    return tensors


def layout_of(state: dict[str, torch.Tensor]) -> str:
    """reidbench | fast-reid | torchreid | strong-baseline, from the key names."""
    keys = set(state)
    if (
        "backbone.stem.0.weight" in keys
        or not any(k.startswith(("backbone.conv1", "base.", "conv1.")) for k in keys)
        and any(k.startswith("backbone.") for k in keys)
    ):
        return "reidbench"
    if any(k.startswith("heads.") for k in keys) and "backbone.conv1.weight" in keys:
        return "fast-reid"
    if "base.conv1.weight" in keys:
        return "strong-baseline"
    if "conv1.weight" in keys:
        return "torchreid"
    return "unknown"


def to_baseline(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """`state` renamed to reidbench's baseline: (state, layout, notes on what was filled or left out)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    layout = layout_of(state)
    if layout == "reidbench":
        return state, layout, []
    if layout == "unknown":
        raise UserError(
            f"--weights {source}: the key names fit none of the layouts reidbench maps (reidbench, fast-reid, "
            f"torchreid, reid-strong-baseline); its first key is {next(iter(state))!r}."
        )
    prefix, neck = {
        "fast-reid": ("backbone.", "heads.bottleneck.0."),
        "strong-baseline": ("base.", "bottleneck."),
        "torchreid": ("", None),
    }[layout]
    out, notes, left = {}, [], []
    for key, value in state.items():
        inner = key.removeprefix(prefix) if key.startswith(prefix) else None
        if inner is not None and _BACKBONE.match(inner):
            stem = next((new for old, new in _STEM.items() if inner.startswith(old)), None)
            out[stem + inner.split(".", 1)[1] if stem else f"backbone.{inner}"] = value
        elif neck and key.startswith(neck):
            out["bnneck." + key.removeprefix(neck)] = value
        elif layout == "torchreid" and key.startswith(("bnneck.", "bottleneck.")):
            out["bnneck." + key.split(".", 1)[1]] = value
        elif key in ("classifier.weight", "heads.weight", "heads.classifier.weight"):
            out["classifier.weight"] = value
        else:
            left.append(key)
    if left:
        notes.append(
            f"left out {len(left)} key(s) the baseline has no place for ({', '.join(left[:3])}{', ...' if len(left) > 3 else ''})"
        )
    if "bnneck.weight" not in out:
        norms = [
            v for k, v in out.items() if k.startswith("backbone.layer4.") and k.endswith(".weight") and v.dim() == 1
        ]
        width = norms[-1].shape[0] if norms else 2048  # the last block's output BatchNorm: the embedding's width
        out.update(
            {
                "bnneck.weight": torch.ones(width),
                "bnneck.bias": torch.zeros(width),
                "bnneck.running_mean": torch.zeros(width),
                "bnneck.running_var": torch.ones(width),
                "bnneck.num_batches_tracked": torch.zeros((), dtype=torch.long),
            }
        )
        notes.append("no BNNeck in the checkpoint: an identity BNNeck (its embedding is the pooled feature)")
    if "classifier.weight" not in out:  # unused at test time: one placeholder class
        out["classifier.weight"] = torch.zeros(1, out["bnneck.weight"].shape[0])
        notes.append("no classifier in the checkpoint (unused at test time)")
    if "bnneck.num_batches_tracked" not in out:
        out["bnneck.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return out, layout, notes


def num_classes_of(state: dict[str, torch.Tensor]) -> int:
    """The classifier's outputs (any number does at test time, where the classifier is unused)."""
    weight = state.get("classifier.weight")
    return int(weight.shape[0]) if weight is not None else 1
