"""The trained model as an artefact: `cells/<id>/model.safetensors` and `cells/<id>/model.json`.

A cell saves its final weights before it evaluates them, so a kept model can be tested later on
any test set (harness.engine.evaluate) without training again. The weights are a safetensors file
(tensors only: loading one runs no pickled code); model.json says how to rebuild the module that
takes them (method, variant, backbone, resolved builder options, number of classes), what it needs at
test time (input size, cue maps, embedding width, distance), where it came from (cell id and id
version, reidbench version and git sha, the training figures and dataset fingerprints), and
`run_id`, left null here for the run (attempt) that wrote it. model.json is written last: a model
is whole when both files are there (Store.has_model). Resume checkpoints stay separate
(checkpoint.pt, with the optimizer; removed when the cell is done).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import harness
from harness import provenance
from harness.errors import UserError
from harness.spec import ID_VERSION, Cell
from harness.store import Store, atomic_write
from methods import create_model

FORMAT = 1  # model.json's own layout


def describe(
    cell: Cell,
    model: torch.nn.Module,
    *,
    num_classes: int,
    input_size: tuple[int, int],
    trained: dict,
    train_fingerprint: str | None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """model.json's content for a model that `cell` trained in run `run_id` (the run its rows carry)."""
    sha, dirty = provenance.git_state()
    options = {k: v for k, v in cell.model_kwargs().items() if k not in ("variant", "backbone")}
    return {
        "format": FORMAT,
        "cell_id": cell.id,
        "id_version": ID_VERSION,
        "run_id": run_id,
        "method": cell.method,
        "variant": cell.variant,
        "backbone": cell.backbone,
        "options": options,
        "num_classes": num_classes,
        "input_size": list(input_size),
        "test_cues": list(model.test_cues),
        "embedding_dim": int(model.embedding_dim),
        "distance": "own" if hasattr(model, "distance") else "euclidean",
        "trained": trained,  # iterations, seconds, images_per_second
        "train_fingerprint": train_fingerprint,
        "reidbench_version": harness.__version__,
        "git_sha": sha,
        "git_dirty": dirty,
        "saved_at": str(provenance.now()),
        "cell": cell.as_dict(),
    }


def save(store: Store, cell_id: str, model: torch.nn.Module, info: dict[str, Any]) -> Path:
    """Write the weights, then model.json, each atomically; returns the weights' path."""
    # Cloned to plain contiguous CPU tensors: safetensors refuses tensors that share memory.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path = store.model_path(cell_id)

    def write(tmp: str) -> None:
        try:
            save_file(state, tmp, metadata={"cell_id": cell_id, "method": info["method"]})
        except SafetensorError as err:  # safetensors reports I/O errors as its own; a full disk is errno 28
            code = errno.ENOSPC if "os error 28" in str(err) else errno.EIO
            raise OSError(code, str(err)) from None

    atomic_write(path, write)
    text = json.dumps(info, indent=2, sort_keys=True, default=str)
    atomic_write(store.model_info_path(cell_id), lambda tmp: Path(tmp).write_text(text))
    return path


def discard(store: Store, cell_id: str) -> None:
    """Remove a cell's kept model (weights and model.json): none is better than one of another run."""
    store.model_path(cell_id).unlink(missing_ok=True)
    store.model_info_path(cell_id).unlink(missing_ok=True)


def read_info(store: Store, cell_id: str) -> dict[str, Any]:
    """model.json of a kept model; a UserError naming the file when it is missing or damaged."""
    path = store.model_info_path(cell_id)
    try:
        info = store.read_model_info(cell_id)
    except ValueError as err:
        raise UserError(f"{err}. Train the cell again (`reidbench run SPEC --force`).") from None
    if info is None:
        raise UserError(
            f"cell {cell_id} has no kept model: {path} does not exist (the cell is not done, or ran with "
            f"[train] keep_model = false). Run the cell with keep_model = true first."
        )
    missing = [k for k in ("method", "variant", "backbone", "options", "num_classes", "input_size") if k not in info]
    if missing:
        raise UserError(
            f"{path} is damaged: it lacks {', '.join(missing)}. Train the cell again (`reidbench run SPEC --force`)."
        )
    return info


def build(info: dict[str, Any]) -> torch.nn.Module:
    """The untrained module that model.json describes (never ImageNet weights: the file replaces them)."""
    options = {**info["options"], "pretrained": False}
    return create_model(
        info["method"],
        variant=info["variant"],
        backbone=info["backbone"],
        num_classes=int(info["num_classes"]),
        **options,
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a UserError naming the file when it is missing or damaged."""
    if not Path(path).is_file():
        raise UserError(
            f"{path} does not exist: the model's weights are missing. Train the cell again "
            f"(`reidbench run SPEC --force`), or give the right --weights file."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"{path} is damaged or not a safetensors file ({err}). Train the cell again "
            f"(`reidbench run SPEC --force`), or give the right --weights file."
        ) from None


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Copy `state` into `model`, refusing any difference: the first key whose shape does not fit
    (with both shapes), else the keys missing or left over. `what` names the method and backbone."""
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"{source} does not fit {what}: {key} has shape {tuple(tensor.shape)} in the file but "
                f"{tuple(expected[key].shape)} in the model. Check --method, --backbone and the method's options."
            )
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = ([f"missing {len(missing)} key(s), the first {missing[0]}"] if missing else []) + (
            [f"{len(extra)} unknown key(s), the first {extra[0]}"] if extra else []
        )
        raise UserError(
            f"{source} does not fit {what}: {'; '.join(parts)}. Check --method, --backbone and the method's options."
        )
    model.load_state_dict(state, strict=True)


def load(store: Store, cell_id: str, *, variant: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The kept model of a cell, in eval mode on the CPU, and its model.json. `variant`: build that
    variant of the method instead, a view of the kept one (the same parameters, another inference)."""
    info = read_info(store, cell_id)
    model = build({**info, "variant": variant or info["variant"]})
    load_into(
        model,
        read_weights(store.model_path(cell_id)),
        str(store.model_path(cell_id)),
        f"{info['method']}:{info['variant']} on {info['backbone']}",
    )
    return model.eval(), info
