"""A cell's pre-flight across its ranks: join, one all-reduce and a barrier, and the shared store.

Multi-node runs fail in a few ways that otherwise show late and vaguely: a node that cannot reach
the master (a firewall, the wrong interface), a collective that never completes (NCCL on the wrong
network), and a store folder that is not the same on every node (rows and checkpoints written
where rank 0 cannot see them). Each cell checks all three before it trains, and a failure says in
one line which rank on which host failed and what to check:

1. every rank announces itself in ``cells/<id>/preflight/<attempt>/`` (best effort) and joins the
   process group; a rank that cannot join says where it tried, and rank 0 names the ranks that
   never announced themselves;
2. an all-reduce and a barrier on the cell's backend (NCCL or gloo), under the watchdog
   (harness/engine/watch.py), which names a rank that does not come;
3. every rank writes a file with a fresh token to the same folder and reads every other rank's:
   a rank that cannot write, or cannot see another's file, means the store is not shared.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from harness.engine.dist import DistEnv, JoinError, init_distributed, node_name
from harness.engine.watch import Watchdog
from harness.store import atomic_write


class PreflightError(RuntimeError):
    """A rank could not join, or the cell's ranks do not share the store (one line for the user)."""


def join(device: str, timeout_minutes: float, folder: Path) -> DistEnv:
    """Announce this rank in `folder`, then join the process group; a PreflightError if it cannot."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        try:
            _write(folder / f"rank{rank}.json", {"rank": rank, "host": node_name(), "pid": os.getpid()})
        except OSError:
            pass  # the store check below says so, once every rank has joined
    try:
        return init_distributed(device, timeout_minutes)
    except JoinError as err:
        message = str(err)
        if rank == 0:
            absent = [r for r in range(1, world_size) if not (folder / f"rank{r}.json").exists()]
            if absent:
                message += (
                    f"; rank(s) {', '.join(map(str, absent))} never announced themselves in {folder} "
                    f"(not started, or the store is not shared by every node)"
                )
        raise PreflightError(message) from err


def check(env: DistEnv, folder: Path, watch: Watchdog) -> list[str]:
    """Steps 2 and 3 (see the module's docstring); every rank's node name, in rank order."""
    host = node_name()
    if env.world_size == 1:
        return [host]
    watch.at(-3, "the pre-flight all-reduce")
    ones = torch.ones(1, device=env.device)
    dist.all_reduce(ones)
    if round(ones.item()) != env.world_size:
        raise PreflightError(
            f"rank {env.rank} on host {host}: the pre-flight all-reduce summed {ones.item():g} instead of "
            f"{env.world_size}; the {dist.get_backend()} backend is broken on this node"
        )
    watch.at(-2, "the pre-flight barrier")
    dist.barrier()

    token, problem = secrets.token_hex(8), None
    try:
        _write(folder / f"rank{env.rank}.json", {"rank": env.rank, "host": host, "pid": os.getpid(), "token": token})
    except OSError as err:
        problem = f"rank {env.rank} on host {host} cannot write to the store folder {folder} ({err.strerror or err})"
    watch.at(-1, "the pre-flight store check")
    ranks = _all_gather((host, token, problem))
    hosts = [h for h, _, _ in ranks]
    problem = next((p for _, _, p in ranks if p), None)
    if problem is None:
        for other, (other_host, other_token, _) in enumerate(ranks):
            seen = _read_token(folder / f"rank{other}.json")
            if other != env.rank and seen != other_token:
                why = "missing" if seen is None else "an older file"
                problem = (
                    f"rank {env.rank} on host {host} cannot see the file rank {other} on host {other_host} wrote to "
                    f"the store folder {folder} ({why})"
                )
                break
    problems = [p for p in _all_gather(problem) if p]
    if problems:
        raise PreflightError(
            f"{problems[0]}: every node must see the store at the same path (a shared file system); "
            f"check --store and that the folder is mounted on every node"
        )
    if env.is_main:
        shutil.rmtree(folder, ignore_errors=True)  # every rank has read it: all passed the gather above
    return hosts


def _all_gather(value) -> list:
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _write(path: Path, record: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record)))


def _read_token(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("token")
    except (OSError, ValueError):
        return None
