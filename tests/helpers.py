"""Shared pieces of the tests (and of benchmarks/): tiny grid specs written from one template, the
`reidbench` command in a subprocess, waiting on a cluster, and the methods' tiny end-to-end grids.

Import them as `from tests.helpers import ...`; tests/conftest.py also offers `make_spec` as a
fixture that writes into the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.spec import load_spec
from harness.spec.schema import MOVED_TO_METHOD_OPTIONS
from harness.store import Store

# The tiny grid: resnet18 baseline cells on 16 synthetic ids at 64 x 32, one CPU process, 10 steps.
TINY: dict[str, dict[str, Any]] = {
    "grid": {"methods": ["baseline"], "backbones": ["resnet18"], "train_datasets": ["market1501"]},
    "train": {
        "input_size": [64, 32],
        "iterations": 10,
        "ids_per_batch": 4,
        "images_per_id": 2,
        "num_workers": 0,
        "eval_batch_size": 32,
        "log_every": 5,
    },
    "synthetic": {"ids": 16},
    "resources": {"world_size": 1, "device": "cpu"},
}


def spec_text(name: str | None = None, **tables: dict | list | None) -> str:
    """TINY as TOML, each keyword table merged over its TINY table (see `write_spec`)."""
    merged = {table: dict(values) for table, values in TINY.items()}
    for table, values in tables.items():
        if values is None or table not in merged or not isinstance(values, dict):
            merged[table] = values
        else:
            merged[table].update(values)
    if name is not None:
        merged["grid"] = {"name": name, **merged["grid"]}
    # The model settings are each method's options (cell id version 2): no ImageNet weights in tests,
    # unless a test asks; a model setting given in train= goes to every method's options.
    moved = {
        k: merged["train"].pop(k)
        for k in MOVED_TO_METHOD_OPTIONS
        if isinstance(merged.get("train"), dict) and k in merged["train"]
    }
    options = dict(merged.get("method_options") or {})
    for method in dict.fromkeys(m.partition(":")[0] for m in merged["grid"].get("methods", [])):
        options[method] = {"pretrained": False, **moved, **options.get(method, {})}
    merged["method_options"] = options
    lines: list[str] = []
    for table, values in merged.items():
        if isinstance(values, list):  # an array of tables, e.g. [[combine]]
            for item in values:
                _table(lines, table, item, array=True)
        elif values is not None:
            _table(lines, table, values)
    return "\n".join(lines)


def write_spec(folder: Path, name: str | None = None, *, file: str | None = None, **tables: dict | list | None) -> Path:
    """Write a tiny grid spec into `folder` and return its path.

    Each keyword is a spec table merged over TINY's: `train={"iterations": 30}` changes one key, and
    a key or a whole table given as None is left out (the spec's default applies). Nested tables and
    arrays of tables are written as such: `train={"phases": [{...}, {...}]}` gives [[train.phases]],
    `datasets={"market1501": {"root": "data"}}` gives [datasets.market1501], `combine=[{...}]` gives
    [[combine]]. The grid is called `name` (default: a fresh unique name, so that grids of one store
    or cluster never share a name) and the file `<file or name>.toml`.
    """
    name = name or f"t{uuid.uuid4().hex[:8]}"
    path = Path(folder) / f"{file or name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec_text(name, **tables))
    return path


def cluster_spec(
    folder: Path,
    *,
    seeds=(0,),
    iterations: int = 30,
    time: int = 60,
    max_requeues: int = 3,
    name: str | None = None,
    **train: Any,
) -> Path:
    """The cluster tests' grid: each cell a 2-process DDP job on the CPU that checkpoints every 10 steps."""
    return write_spec(
        folder,
        name,
        grid={"seeds": list(seeds)},
        resources={"world_size": 2},
        train={"iterations": iterations, "checkpoint_every": 10, **train},
        slurm={"time": time, "max_requeues": max_requeues},
    )


def reidbench(*args: Any, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """The `reidbench` command in a subprocess (this interpreter, this checkout), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or os.environ.copy(),
        timeout=timeout,
        check=False,
    )


def cache_env(folder: Path) -> dict[str, str]:
    """This environment with its own synthetic-data cache under `folder`."""
    return {**os.environ, "REIDBENCH_CACHE": str(Path(folder) / "cache")}


def wait_for(condition: Callable[[], object], what: str, timeout: float = 300, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_grid(
    root: Path, methods: list[str], *, tests: tuple[str, ...] = ("market1501",), iterations: int = 10
) -> tuple[subprocess.CompletedProcess, dict[str, list[dict]]]:
    """Run `methods` (method:variant each) for `iterations` steps and test them on `tests`;
    returns the run and each cell's rows by "method:variant"."""
    name = "-".join(m.replace(":", "-") for m in methods)
    spec = write_spec(
        root,
        name,
        grid={"methods": methods, "test_datasets": list(tests)},
        train={"iterations": iterations, "lr": 1e-3, "warmup": 2, "milestones": [iterations - 2]},
    )
    run = reidbench("run", spec, "--store", "store", cwd=root, env=cache_env(root))
    rows = Store(root / "store").read().rows if run.returncode == 0 else []
    cells = {f"{c.method}:{c.variant}": c.id for c in load_spec(spec).cells}
    return run, {m: [r for r in rows if r["cell_id"] == cell_id] for m, cell_id in cells.items()}


def run_tiny_grid(root: Path, method: str) -> tuple[subprocess.CompletedProcess, list[dict], str]:
    """Run one `method` (method:variant) for 10 steps; returns the run, its cell's rows and the cell id."""
    run, rows = run_grid(root, [method])
    (cell,) = load_spec(next(root.glob("*.toml"))).cells
    return run, rows[method], cell.id


def _table(lines: list[str], header: str, values: dict, *, array: bool = False) -> None:
    nested = [
        (k, v)
        for k, v in values.items()
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(i, dict) for i in v))
    ]
    plain = [f"{k} = {_value(v)}" for k, v in values.items() if v is not None and (k, v) not in nested]
    if array or plain or not nested:  # a table of tables only needs no header of its own
        lines += [f"[[{header}]]" if array else f"[{header}]", *plain, ""]
    for key, value in nested:
        for item in value if isinstance(value, list) else [value]:
            _table(lines, f"{header}.{key}", item, array=isinstance(value, list))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


@contextlib.contextmanager
def ray_cluster_of_two_nodes() -> Iterator[dict[str, str]]:
    """A Ray cluster of two nodes on this machine, started with Ray's own commands: a head node at
    127.0.0.1 and a worker node at 127.0.0.2 (a loopback address, each node its own raylet, object
    store and custom resource `node1` / `node2`). Yields the environment to reach it (RAY_ADDRESS,
    and a private auth token). Each node has its own temp folder and free ports, so the cluster
    is invisible to a bare `ray.init()` elsewhere on the machine; it is stopped by killing exactly
    the processes started for it."""
    folder = Path(tempfile.mkdtemp(prefix="rb-ray-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    ports = _free_ports(14)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex, "RAY_USAGE_STATS_ENABLED": "0"}
    ray = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--disable-usage-stats",
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(200 * 2**20),
    ]

    def node(index: int, *extra: str) -> list[str]:
        p = ports[1 + 6 * index :]
        return [
            *ray,
            *extra,
            "--temp-dir",
            str(folder / f"node{index + 1}"),
            "--resources",
            f'{{"node{index + 1}": 1}}',
            "--node-manager-port",
            str(p[0]),
            "--object-manager-port",
            str(p[1]),
            "--dashboard-agent-listen-port",
            str(p[2]),
            "--dashboard-agent-grpc-port",
            str(p[3]),
            "--runtime-env-agent-port",
            str(p[4]),
            "--metrics-export-port",
            str(p[5]),
            "--min-worker-port",
            str(20000 + 2000 * index),
            "--max-worker-port",
            str(21999 + 2000 * index),
        ]

    address = f"127.0.0.1:{ports[0]}"
    try:
        for command in (
            node(
                0,
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(ports[0]),
                "--include-dashboard",
                "false",
                "--dashboard-port",
                str(ports[13]),
            ),
            node(1, "--address", address, "--node-ip-address", "127.0.0.2"),
        ):
            started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield {**env, "RAY_ADDRESS": address}
    finally:
        _stop_processes_mentioning(str(folder))
        shutil.rmtree(folder, ignore_errors=True)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _stop_processes_mentioning(text: str) -> None:
    """SIGTERM, then SIGKILL, every process whose command line holds `text` (the cluster's own folder)."""

    def matching() -> list[int]:
        pids = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in matching():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 15
        while matching() and time.monotonic() < deadline:
            time.sleep(0.3)
