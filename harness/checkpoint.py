"""Checkpoint and resume a cell's training: model, optimizer, schedule, step and RNG states.

A checkpoint is taken every `[train] checkpoint_every` steps and when a stop is requested (SLURM's
warning signal before a time limit or a preemption). All ranks take it at the same step; rank 0
writes it atomically. A resumed run continues from that step (the P x K sampler is a function of
the step) and ends with the same number of steps as an uninterrupted one.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

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


class Sink(Protocol):
    """Where checkpoints live: a file beside the store, or Ray Train's checkpoint storage."""

    def load(self) -> dict | None: ...
    def save(self, state: dict | None, step: int) -> None: ...  # called on every rank; state only on rank 0
    def clear(self) -> None: ...


class FileSink:
    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, state: dict | None, step: int) -> None:
        if state is not None:
            save(self.path, state)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def save(path: Path, state: dict) -> None:
    """Write under a temporary name, fsync, rename: a crash never leaves a half checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            torch.save(state, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
