"""A cell's pre-flight and its collective watchdog, across real gloo processes on this machine.

Each failure the issue names is made for real: a rank pointed at a port where nobody listens, a
rank that never starts, ranks that do not share the store folder, a rank that never comes to an
all-reduce, and (end to end) a rank of a running cell stopped with SIGSTOP.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.spec import load_spec
from harness.store import Store
from tests.helpers import cluster_spec, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(target, world_size: int, *args, ranks=None) -> list[int]:
    """Run target(rank, *args) in one spawned process per rank; their exit codes."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=target, args=(rank, world_size, *args)) for rank in (ranks or range(world_size))
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
        if p.is_alive():
            p.kill()
    return [p.exitcode for p in processes]


def _environ(rank: int, world_size: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def _join(rank: int, world_size: int, port: int, bad_port: int, folder: str, out: str) -> None:
    from harness.engine.preflight import PreflightError, join

    _environ(rank, world_size, bad_port if rank == 1 else port)
    try:
        join("cpu", 0.1, Path(folder))  # 6 s
    except PreflightError as err:
        Path(out, f"rank{rank}.txt").write_text(str(err))


def test_a_rank_that_cannot_reach_the_master_says_who_it_is_where_it_tried_and_what_to_check(tmp_path):
    port, bad_port = _free_port(), _free_port()  # nobody listens on bad_port
    _ranks(_join, 2, port, bad_port, str(tmp_path / "preflight"), str(tmp_path))
    host = socket.gethostname()
    one = (tmp_path / "rank1.txt").read_text()
    assert one.startswith(
        f"rank 1 of 2 on host {host} could not join the gloo process group at 127.0.0.1:{bad_port} within 0.1 min"
    ), one
    assert "check that every node reaches 127.0.0.1:" in one and "GLOO_SOCKET_IFNAME" in one and "\n" not in one
    zero = (tmp_path / "rank0.txt").read_text()
    assert zero.startswith(f"rank 0 of 2 on host {host} could not join the gloo process group at 127.0.0.1:{port}"), (
        zero
    )
    assert "never announced" not in zero  # rank 1 started: it announced itself in the store folder


def test_rank_0_names_the_ranks_that_never_started(tmp_path):
    _ranks(_join, 3, _free_port(), _free_port(), str(tmp_path / "preflight"), str(tmp_path), ranks=[0])
    zero = (tmp_path / "rank0.txt").read_text()
    assert "rank(s) 1, 2 never announced themselves in" in zero and str(tmp_path / "preflight") in zero, zero


def _check(rank: int, world_size: int, port: int, folders: list[str], out: str) -> None:
    from harness.engine.preflight import PreflightError, check, join
    from harness.engine.watch import Watchdog

    _environ(rank, world_size, port)
    env = join("cpu", 0.5, Path(folders[rank]))
    try:
        with Watchdog(rank=rank, world_size=world_size, host=f"node{rank}", timeout_s=30, on_timeout=print) as watch:
            result = check(env, Path(folders[rank]), watch)
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    except PreflightError as err:
        Path(out, f"rank{rank}.txt").write_text(str(err))


def test_the_store_check_passes_on_a_shared_folder_and_returns_every_ranks_node(tmp_path):
    shared = str(tmp_path / "shared")
    assert _ranks(_check, 2, _free_port(), [shared, shared], str(tmp_path)) == [0, 0]
    host = socket.gethostname()
    assert json.loads((tmp_path / "rank0.json").read_text()) == [host, host]
    assert not Path(shared).exists()  # rank 0 cleans up once every rank has read it


def test_ranks_that_do_not_share_the_store_folder_fail_alike_naming_who_cannot_see_whom(tmp_path):
    folders = [str(tmp_path / "node0"), str(tmp_path / "node1")]  # as if each node had its own disk
    _ranks(_check, 2, _free_port(), folders, str(tmp_path))
    messages = {(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)}
    assert len(messages) == 1, messages  # every rank raises the same line
    (message,) = messages
    host = socket.gethostname()
    assert message.startswith(
        f"rank 0 on host {host} cannot see the file rank 1 on host {host} wrote to the store folder "
        f"{folders[0]} (missing): every node must see the store at the same path"
    ), message


def _hang(rank: int, world_size: int, port: int, out: str, timeout_s: float, stop_rank_1: bool) -> None:
    import torch
    import torch.distributed as dist

    from harness.engine.dist import init_distributed
    from harness.engine.watch import Watchdog

    _environ(rank, world_size, port)
    init_distributed("cpu", 1.0)

    def timed_out(line: str) -> None:
        Path(out, f"rank{rank}.txt").write_text(line)
        os._exit(3)

    with Watchdog(
        rank=rank, world_size=world_size, host=f"node{rank}", timeout_s=timeout_s, on_timeout=timed_out
    ) as watch:
        if rank == 0:
            watch.at(9, "training step 5")
            dist.all_reduce(torch.ones(1))  # rank 1 never comes
        else:
            watch.at(8, "loading the batch of training step 5", waiting=False)  # its own work: never fires
            deadline = time.monotonic() + 30
            while not watch.store.check(["reidbench/watch/1"]) and time.monotonic() < deadline:
                time.sleep(0.1)  # until its watchdog has published where it is
            if stop_rank_1:
                os.kill(os.getpid(), signal.SIGSTOP)  # the test kills it
            time.sleep(timeout_s + 10)
    os._exit(0)


def test_a_rank_stuck_in_a_collective_names_the_rank_it_waited_for_and_where_that_one_is(tmp_path):
    codes = _ranks(_hang, 2, _free_port(), str(tmp_path), 4.0, False)
    assert codes == [3, 0], codes  # rank 0 ended by its watchdog; rank 1, busy with its own work, did not fire
    line = (tmp_path / "rank0.txt").read_text()
    assert re.fullmatch(
        r"rank 0 on host node0 waited \d+ s at training step 5 for rank 1 on host node1 "
        r"\(at loading the batch of training step 5\)",
        line,
    ), line


def test_a_silent_rank_is_named_as_silent(tmp_path):
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    ranks = [context.Process(target=_hang, args=(r, 2, port, str(tmp_path), 12.0, True)) for r in (0, 1)]
    for p in ranks:
        p.start()
    try:
        ranks[0].join(60)
        assert ranks[0].exitcode == 3
    finally:
        for p in ranks:
            if p.is_alive():
                p.kill()  # rank 1 is stopped: only SIGKILL ends it
    line = (tmp_path / "rank0.txt").read_text()
    assert re.fullmatch(
        r"rank 0 on host node0 waited \d+ s at training step 5 for rank 1 on host node1 \(silent for \d+ s, "
        r"last at loading the batch of training step 5: its process hangs, was stopped or lost the network\)",
        line,
    ), line


def _descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            out += [int(child), *_descendants(int(child))]
    return out


def _rank_pid(root: int, rank: int) -> int | None:
    """The process of `rank` among the launcher's children: its stdout is the rank's log file."""
    for pid in _descendants(root):
        try:
            if os.readlink(f"/proc/{pid}/fd/1").endswith(f"/{rank}/stdout.log"):
                return pid
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_a_cell_whose_rank_stops_fails_as_a_collective_timeout_naming_that_rank(tmp_path):
    spec = cluster_spec(tmp_path, iterations=400)
    spec.write_text(spec.read_text().replace('device = "cpu"', 'device = "cpu"\ncollective_timeout = 0.4'))  # 24 s
    (cell,) = load_spec(spec).cells
    store = Store(tmp_path / "store")
    run = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(spec), "--store", "store"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stopped = None
    try:
        log = store.cell_dir(cell.id) / "logs"
        wait_for(
            lambda: any("step 20:" in p.read_text() for p in log.rglob("stdout.log")), "training to start", timeout=300
        )
        stopped = _rank_pid(run.pid, 1)
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)
        out, err = run.communicate(timeout=300)
    finally:
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, out + err
    state = store.read_state(cell.id)
    assert state["state"] == "failed", state
    host = socket.gethostname()
    assert re.match(
        rf"NCCL/collective timeout: rank 0 on host {host} waited \d+ s at training step \d+ for rank 1 on host "
        rf"{host} \(silent for \d+ s, last at (training step|loading the batch of training step) \d+: its process "
        rf"hangs, was stopped or lost the network\) \(\[resources\] collective_timeout = 0.4 min\)",
        state["reason"],
    ), state
    assert f"cell {cell.id} failed: NCCL/collective timeout: rank 0" in err, err
    assert "where rank 0's main thread waited" in state["traceback"]
    assert store.read().rows == []


@pytest.mark.slow
def test_env_reaches_every_rank_a_bad_interface_fails_the_pre_flight_in_one_line(tmp_path):
    """[env] goes to the ranks the local executor starts: gloo there binds to the interface it names,
    and one that does not exist fails every rank's join, which the cell reports in one line."""
    spec = cluster_spec(tmp_path, iterations=10)
    spec.write_text(spec.read_text().replace("[slurm]", '[env]\nGLOO_SOCKET_IFNAME = "nosuchif0"\n\n[slurm]'))
    (cell,) = load_spec(spec).cells
    run = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(spec), "--store", "store"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    reason = Store(tmp_path / "store").read_state(cell.id)["reason"]
    assert re.match(
        rf"pre-flight: rank [01] of 2 on host {socket.gethostname()} could not join the gloo process group at "
        r"\S+:\d+ within 30 min \(.*nosuchif0.*\); check that every node reaches",
        reason,
    ), reason
    assert "\n" not in reason and f"cell {cell.id} failed: pre-flight: rank" in run.stderr
    assert "GLOO_SOCKET_IFNAME" not in os.environ  # the launch's environment was restored


@pytest.mark.slow
def test_a_world_of_one_forms_its_process_group_when_the_spec_asks(tmp_path):
    """[env] REIDBENCH_PROCESS_GROUP = "always": the collectives run with one rank (on a GPU: NCCL on
    one GPU, benchmarks/gpu_check.sh's smoke cell); here gloo, and the cell trains and writes its rows."""
    spec = cluster_spec(tmp_path, iterations=10)
    text = spec.read_text().replace("world_size = 2", "world_size = 1")
    spec.write_text(text.replace("[slurm]", '[env]\nREIDBENCH_PROCESS_GROUP = "always"\n\n[slurm]'))
    (cell,) = load_spec(spec).cells
    run = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(spec), "--store", "store"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    log = "".join(p.read_text() for p in (tmp_path / "store" / "cells" / cell.id / "logs").rglob("stdout.log"))
    assert f"pre-flight passed: gloo process group of 1 rank(s) on {socket.gethostname()}" in log, log
    rows = Store(tmp_path / "store").read().rows
    assert rows and all(r["nodes"] == 1 and r["hosts"] == [socket.gethostname()] for r in rows)


def test_failures_are_classed_with_collective_timeouts_beside_oom_nan_and_code_errors():
    from harness.executors import classify

    assert (
        classify("RuntimeError: [../gloo/transport/tcp/pair.cc:534] Timed out waiting 60000ms for recv")
        == "NCCL/collective timeout: RuntimeError: [../gloo/transport/tcp/pair.cc:534] Timed out waiting 60000ms for recv"
    )
    assert classify(
        "DistBackendError: [Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5)"
    ).startswith("NCCL/collective timeout: ")
    for kept in (
        "NCCL/collective timeout: rank 0 on host a waited 30.0 min",
        "pre-flight: rank 1 of 2 on host b could not join",
    ):
        assert classify(kept) == kept
    assert (
        classify("CUDA out of memory").startswith("OOM: ") and classify("KeyError: 'x'") == "code error: KeyError: 'x'"
    )
