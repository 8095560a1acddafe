"""Checkpoint and resume a cell's training: model, optimizer, schedule, step and RNG states.

A checkpoint is taken every `[train] checkpoint_every` steps, when a stop is requested (SLURM's
warning signal before a time limit or a preemption) and after the last step, before evaluation (so
an evaluation failure never costs a retrain). All ranks take it at the same step; rank 0 writes it
atomically and keeps the one before it. A resumed run continues from that step and is
bit-identical to the uninterrupted run on the CPU: the P x K sampler and each image's augmentation
are functions of the step (harness/data/sampler.py), and the RNG states restored here are the
processes' own streams (dropout and the like).

Checkpoints are loaded with ``torch.load(weights_only=True)``: a file in a shared store is data,
never code (RNG states are kept as tensors and plain lists for that). A checkpoint that cannot be
read or does not fit the cell is named in one line, moved aside as ``*.bad-<time>``, and the
previous one, or a fresh start, is used instead. A checkpoint that cannot be written (a full disk)
is skipped with a warning: training goes on.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from harness.modes import as_created_file

_stop = threading.Event()
_listening = threading.Event()


class StopRequested(Exception):
    """Raised out of training once the checkpoint for a stop request is written."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step} for a requeue; the checkpoint is written")
        self.step = step


def listen(signum: int) -> Any:
    """Turn `signum` into a stop request honoured at the next step boundary; returns the old handler."""
    _stop.clear()
    _listening.set()
    return signal.signal(signum, lambda *_: _stop.set())


def stop_requested() -> bool:
    """Whether any rank has been asked to stop (one small all-reduce, only when listening)."""
    if not _listening.is_set():
        return False
    flag = torch.tensor([1.0 if _stop.is_set() else 0.0])
    if dist.is_initialized():
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class NotWritten(Exception):
    """A checkpoint could not be written (the reason is the message); training goes on without it."""


class Sink(Protocol):
    """Where checkpoints live: files beside the store, or Ray Train's checkpoint storage."""

    def candidates(self) -> list[str]: ...  # the checkpoints to try, newest first
    def load(self, name: str) -> dict: ...  # raises when it cannot be read
    def discard(self, name: str, reason: str) -> None: ...  # rank 0: put a bad one out of the way
    def save(self, state: dict | None, step: int) -> None: ...  # called on every rank; state only on rank 0
    def clear(self) -> None: ...


class FileSink:
    """`checkpoint.pt` and, kept beside it, the one before (`checkpoint.prev.pt`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.previous = self.path.with_name(f"{self.path.stem}.prev{self.path.suffix}")

    def candidates(self) -> list[str]:
        return [str(p) for p in (self.path, self.previous) if p.is_file()]

    def load(self, name: str) -> dict:
        return load(Path(name))

    def discard(self, name: str, reason: str) -> None:
        path = Path(name)
        try:
            os.replace(path, path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}"))
        except OSError:
            pass  # gone already (another rank, or the previous run) or read-only: the next run says so again

    def save(self, state: dict | None, step: int) -> None:
        if state is not None:
            save(self.path, state, keep_previous=True)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.previous.unlink(missing_ok=True)


def load(path: Path) -> dict:
    """A checkpoint as data only (weights_only): a crafted pickle raises instead of running."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"step", "model", "optimizer", "scheduler", "rng"} <= set(state):
        raise ValueError("not a reidbench checkpoint (its keys are missing)")
    return state


def save(path: Path, state: dict, *, keep_previous: bool = False) -> None:
    """Write under a temporary name, fsync, rename: a crash never leaves a half checkpoint. With
    `keep_previous`, the checkpoint it replaces is kept beside it as `<stem>.prev<suffix>`.
    NotWritten when the disk is full (or the folder cannot be written): the caller goes on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise NotWritten(f"cannot write the checkpoint {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            torch.save(state, out)
            out.flush()
            os.fsync(out.fileno())
        as_created_file(tmp)
        if keep_previous and path.exists():
            os.replace(path, path.with_name(f"{path.stem}.prev{path.suffix}"))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        needed = _nbytes(state)
        free = shutil.disk_usage(path.parent).free
        full = getattr(err, "errno", None) == errno.ENOSPC or (isinstance(err, RuntimeError) and free < needed)
        if full:
            raise NotWritten(
                f"no space left on {path.parent} for the checkpoint {path.name} (needs about "
                f"{needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free)"
            ) from None
        if isinstance(err, OSError):
            raise NotWritten(f"cannot write the checkpoint {path}: {err.strerror or err}") from None
        raise


def resume(
    sink: Sink,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    *,
    rank: int,
    world_size: int,
    phase_of: Callable[[int], int],
    log: Callable[[str], None],
) -> int:
    """Restore the newest usable checkpoint; returns its step (0: none, a fresh start). A bad one
    is named in one line and moved aside, and the next one tried."""
    for name in sink.candidates():
        try:
            state = sink.load(name)
            _check_fits(state, model, optimizer, world_size)
            step = int(state["step"])
            if "phase" in state and int(state["phase"]) != phase_of(step):
                raise ValueError(
                    f"it was taken in phase {int(state['phase']) + 1}, but this cell's phases put step {step} "
                    f"in phase {phase_of(step) + 1} (did its datasets change?)"
                )
        except Exception as err:  # unreadable, truncated, foreign, crafted or another model's: never fatal
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            log(f"checkpoint {name} is not usable, moved aside: {reason}")
            if rank == 0:
                sink.discard(name, reason)
            continue
        return restore(state, model, optimizer, scheduler, rank, world_size)
    return 0


def _check_fits(state: dict, model: torch.nn.Module, optimizer, world_size: int) -> None:
    """Everything restore() needs, checked before anything is changed: a checkpoint that fails
    half-way would leave the model half loaded."""
    own = model.state_dict()
    theirs = state["model"]
    if not isinstance(theirs, dict) or set(theirs) != set(own):
        missing, extra = sorted(set(own) - set(theirs or {})), sorted(set(theirs or {}) - set(own))
        raise ValueError(f"its model has other parameters (missing {missing[:3]}, unexpected {extra[:3]})")
    wrong = [k for k, v in own.items() if not isinstance(theirs[k], torch.Tensor) or theirs[k].shape != v.shape]
    if wrong:
        raise ValueError(
            f"{len(wrong)} parameter(s) of another shape, e.g. {wrong[0]}: "
            f"{tuple(getattr(theirs[wrong[0]], 'shape', ()))} in the file, {tuple(own[wrong[0]].shape)} here"
        )
    groups = state["optimizer"].get("param_groups", []) if isinstance(state["optimizer"], dict) else []
    if [len(g.get("params", ())) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("its optimizer holds other parameter groups")
    rng = state["rng"]
    if not isinstance(rng, list) or not all(
        isinstance(r, dict) and {"torch", "numpy", "python"} <= set(r) for r in rng
    ):
        raise ValueError("its RNG states are not in this reidbench's format")


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def capture(model: torch.nn.Module, optimizer, scheduler, step: int, rank: int) -> dict | None:
    """The state at a step boundary, on rank 0 (None elsewhere); RNG states come from every rank."""
    rng = _rng_state()
    if dist.is_initialized():
        states: list = [None] * dist.get_world_size()
        dist.all_gather_object(states, rng)
    else:
        states = [rng]
    if rank != 0:
        return None
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": states,
    }


def restore(state: dict, model: torch.nn.Module, optimizer, scheduler, rank: int, world_size: int) -> int:
    """Load `state` into the objects; returns the step to continue from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if len(state["rng"]) == world_size:  # another world size draws other streams anyway
        _set_rng_state(state["rng"][rank])
    return int(state["step"])


def _rng_state() -> dict:
    """The process's RNG states as tensors and plain lists, which a weights_only load accepts."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
        "python": [int(version), list(internal), python_gauss],
    }


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, position, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, python_gauss = rng["python"]
    random.setstate((version, tuple(internal), python_gauss))
