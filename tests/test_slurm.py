"""The slurm executor against a real SLURM cluster (scripts/slurm-local.sh up starts one here).

Every cell is a 2-task DDP job on the CPU (gloo). Preemption and time limits are triggered with
submitit's own interrupt helper, which sends what SLURM sends; the cells must resume from their
checkpoints and end with exactly the rows of an uninterrupted run. No test reads accounting (sacct).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import submitit

from harness import manifest
from harness.spec import load_spec
from harness.status import cell_statuses, expected_rows
from harness.store import Store
from tests.helpers import cluster_spec, reidbench, wait_for


def _cluster_up() -> str | None:
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (scripts/slurm-local.sh up installs and starts a local cluster)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.SubprocessError as err:
        return f"sinfo failed: {err}"
    if out.returncode or not {"idle", "mixed", "allocated"} & set(out.stdout.split()):
        return f"no SLURM node is up (sinfo: {out.stdout.strip() or out.stderr.strip()}); run scripts/slurm-local.sh up"
    return None


_DOWN = _cluster_up()
if _DOWN and os.environ.get("CI"):
    raise RuntimeError(f"CI must start the SLURM cluster before the tests: {_DOWN}")
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(_DOWN is not None, reason=_DOWN or "")]


@pytest.fixture
def work(tmp_path):
    """A folder with its own store; every job the test submitted is cancelled afterwards."""
    store = Store(tmp_path / "store")
    yield tmp_path, store
    jobs = [r["job_id"] for r in manifest.read_all(store).values() if r.get("executor") == "slurm"]
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True)


def _submit(spec: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    run = reidbench("run", spec, "--store", "store", "--executor", "slurm", *extra, cwd=work)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def _wait_done(spec: Path, store: Store, timeout: float = 400) -> None:
    cells = load_spec(spec).cells

    def finished():
        current = cell_statuses(cells, store)
        failed = [s for s in current if s.state in ("failed", "cancelled", "rows missing")]
        assert not failed, [(s.cell.id, s.state, s.detail) for s in failed]
        return all(s.state == "done" for s in current)

    wait_for(finished, f"the cells of {spec.name} to finish", timeout=timeout, every=2)


def _rows(store: Store, cell_id: str) -> list[dict]:
    return [r for r in store.read().rows if r["cell_id"] == cell_id]


def _log(store: Store, cell_id: str) -> str:
    return Path(manifest.read(store, cell_id)["stdout"]).read_text()


def test_a_two_cell_grid_runs_as_one_array_of_ddp_jobs(work):
    root, store = work
    spec = cluster_spec(root, seeds=(0, 1))
    run = _submit(spec, root)
    assert re.search(r"submitted 2 cell\(s\) as job array \d+", run.stdout), run.stdout
    cells = load_spec(spec).cells
    records = [manifest.read(store, c.id) for c in cells]
    array = {r["array_job_id"] for r in records}
    assert len(array) == 1 and sorted(r["array_index"] for r in records) == [0, 1]
    # Non-blocking: the command returned while the cells are still queued or running.
    assert all(s.state in ("pending", "running", "submitted") for s in cell_statuses(cells, store))

    _wait_done(spec, store)
    for cell, record in zip(cells, records):
        rows = _rows(store, cell.id)
        assert sorted((r["test_dataset"], r["rerank"]) for r in rows) == sorted(expected_rows(cell))
        for row in rows:
            scheduler = json.loads(row["config"])["scheduler"]
            assert row["world_size"] == 2 and row["executor"] == "slurm" and row["iterations"] == 30
            assert f"{scheduler['slurm_array_job_id']}_{scheduler['slurm_array_task_id']}" == record["job_id"]
        assert manifest.read(store, cell.id)["attempts"] == 1

    status = reidbench("status", spec, "--store", "store", cwd=root)
    for cell, record in zip(cells, records):
        assert re.search(rf"{cell.id}.*done\s+1\s+{record['job_id']}", status.stdout), status.stdout
    logs = reidbench("logs", cells[0].id[:6], "--store", "store", cwd=root)
    assert logs.returncode == 0 and records[0]["stdout"] in logs.stdout and "trained 30 steps" in logs.stdout

    again = _submit(spec, root)
    assert "Nothing to submit" in again.stdout

    grown = cluster_spec(root, seeds=(0, 1, 2, 3), name=load_spec(spec).name)
    plan = reidbench(
        "run",
        grown,
        "--store",
        "store",
        "--executor",
        "slurm",
        "--dry-run",
        "--partition",
        "debug",
        "--sbatch=--exclusive",
        "--time",
        "30",
        cwd=root,
    )
    assert plan.returncode == 0, plan.stderr
    for line in (
        "2 cell(s) in 1 job array(s)",
        "#SBATCH --array=0-1%2",
        "#SBATCH --partition=debug",
        "#SBATCH --exclusive",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --time=30",
        "GPU-hours (training only, 2 GPU(s) per cell)",
        "rates: 2 cell(s) from the per-backbone prior shipped with reidbench",
    ):
        assert line in plan.stdout, plan.stdout
    assert not (store.root / "manifest" / f"{load_spec(grown).cells[2].id}.json").exists()


def test_resubmission_submits_only_cells_not_done_queued_or_running(work):
    root, store = work
    first = cluster_spec(root, seeds=(0,), name="partial")
    _submit(first, root)
    _wait_done(first, store)
    (done,) = load_spec(first).cells
    done_job = manifest.read(store, done.id)["job_id"]

    grown = cluster_spec(root, seeds=(0, 1, 2), name="partial")  # the same grid, two more seeds
    run = _submit(grown, root)
    assert "Submitted 2 of 3 cell(s)" in run.stdout, run.stdout
    assert manifest.read(store, done.id)["job_id"] == done_job
    queued = [c for c in load_spec(grown).cells if c.id != done.id]
    again = _submit(grown, root)  # the two new cells are still queued or running
    assert "2 cell(s) are still queued or running" in again.stdout and "Nothing to submit" in again.stdout, again.stdout
    assert {manifest.read(store, c.id)["job_id"] for c in queued} == {
        manifest.read(store, c.id)["job_id"] for c in queued
    }

    cancel = reidbench("cancel", grown, "--store", "store", "--cells", queued[0].id, cwd=root)
    assert cancel.returncode == 0 and f"cancelled cell {queued[0].id}" in cancel.stdout, cancel.stdout + cancel.stderr
    wait_for(
        lambda: cell_statuses([queued[0]], store)[0].state == "cancelled",
        "the cancelled cell to show as cancelled",
        timeout=60,
    )
    assert _rows(store, queued[0].id) == []


def _interrupt_once_checkpointed(store: Store, cell_id: str, *, timeout: bool) -> None:
    """Wait until the cell has trained past its first checkpoint, then send SLURM's signal."""
    wait_for(lambda: "checkpoint at step 10" in _log_or_empty(store, cell_id), "the first checkpoint", timeout=300)
    record = manifest.read(store, cell_id)
    submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])._interrupt(timeout=timeout)


def _log_or_empty(store: Store, cell_id: str) -> str:
    try:
        return _log(store, cell_id)
    except (FileNotFoundError, TypeError, KeyError):
        return ""


def _check_resumed(spec: Path, store: Store) -> str:
    (cell,) = load_spec(spec).cells
    _wait_done(spec, store)
    log = _log(store, cell.id)
    resumed = re.findall(r"resumed from the checkpoint at step (\d+)", log)
    assert len(resumed) == 1 and int(resumed[0]) >= 10, log[-3000:]
    rows = _rows(store, cell.id)
    assert sorted((r["test_dataset"], r["rerank"]) for r in rows) == sorted(expected_rows(cell))
    assert all(r["iterations"] == 50 for r in rows)  # the same number of steps as an uninterrupted run
    assert manifest.read(store, cell.id)["attempts"] == 2
    assert not (store.cell_dir(cell.id) / "checkpoint.pt").exists()  # removed once the cell is done
    return log


def test_a_preempted_cell_checkpoints_requeues_and_resumes(work):
    root, store = work
    spec = cluster_spec(root, iterations=50, time=60)  # 60 minutes: submitit takes the signal for a preemption
    _submit(spec, root)
    (cell,) = load_spec(spec).cells
    _interrupt_once_checkpointed(store, cell.id, timeout=False)
    log = _check_resumed(spec, store)
    assert "this job is preempted" in log


def test_a_cell_at_its_time_limit_checkpoints_requeues_and_resumes(work):
    root, store = work
    spec = cluster_spec(root, iterations=50, time=5, max_requeues=1)  # short: submitit takes the signal for a time-out
    _submit(spec, root)
    (cell,) = load_spec(spec).cells
    _interrupt_once_checkpointed(store, cell.id, timeout=True)
    log = _check_resumed(spec, store)
    assert "this job is timed-out" in log and "(0 remaining timeouts)" in log


def test_a_cell_out_of_requeues_fails_with_the_time_limit_as_reason(work):
    root, store = work
    spec = cluster_spec(root, iterations=50, time=5, max_requeues=0)
    _submit(spec, root)
    (cell,) = load_spec(spec).cells
    _interrupt_once_checkpointed(store, cell.id, timeout=True)
    wait_for(lambda: cell_statuses([cell], store)[0].state == "failed", "the cell to fail", timeout=120)
    assert manifest.read(store, cell.id)["reason"].startswith(
        "time limit: Job not requeued because: timed-out too many times"
    )
    assert _rows(store, cell.id) == []
    wait_for(lambda: not cell_statuses([cell], store)[0].active, "the job to end", timeout=120)


def test_a_failing_cell_records_its_reason_and_writes_no_row(work):
    root, store = work
    spec = cluster_spec(root, iterations=20, lr=1e30)
    _submit(spec, root)
    (cell,) = load_spec(spec).cells
    wait_for(lambda: cell_statuses([cell], store)[0].state == "failed", "the cell to fail", timeout=300, every=2)
    assert manifest.read(store, cell.id)["reason"].startswith("NaN: loss became non-finite at step")
    assert _rows(store, cell.id) == []
    status = reidbench("status", spec, "--store", "store", cwd=root)
    assert re.search(rf"{cell.id}.*failed\s+1\s+\S+\s+NaN: loss became non-finite", status.stdout), status.stdout


def test_an_unknown_partition_is_refused_in_one_line_naming_the_setting(work):
    root, _ = work
    spec = cluster_spec(root)
    run = reidbench("run", spec, "--store", "store", "--executor", "slurm", "--partition", "nosuchpartition", cwd=root)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0, run.stderr
    assert "invalid partition" in run.stderr.lower() and "--partition" in run.stderr, run.stderr


def test_a_cell_across_two_nodes_runs_one_rank_per_node_and_its_rows_name_both(work):
    """scripts/slurm-local.sh runs two slurmd on this machine (`<host>`, `<host>-2`); partition
    `multinode` takes 2-node jobs. submitit's multi-node environment gives each task its rank and
    the master address (the first node); the ranks meet over gloo on the loopback interface,
    which the spec's [env] names, exported by the job script."""
    root, store = work
    spec = cluster_spec(root, iterations=20)
    text = spec.read_text().replace('device = "cpu"', 'device = "cpu"\nnodes = 2\ncollective_timeout = 5')
    spec.write_text(text.replace("[slurm]", '[env]\nGLOO_SOCKET_IFNAME = "lo"\n\n[slurm]\npartition = "multinode"'))
    (cell,) = load_spec(spec).cells
    plan = reidbench("run", spec, "--store", "store", "--executor", "slurm", "--dry-run", cwd=root)
    assert "#SBATCH --nodes=2" in plan.stdout and "#SBATCH --ntasks-per-node=1" in plan.stdout, plan.stdout
    assert "# setup: export GLOO_SOCKET_IFNAME=lo" in plan.stdout, plan.stdout
    _submit(spec, root)
    _wait_done(spec, store)
    record = manifest.read(store, cell.id)
    script = Path(record["folder"], f"{record['job_id'].partition('_')[0]}_submission.sh").read_text()
    assert "export GLOO_SOCKET_IFNAME=lo" in script and "#SBATCH --nodes=2" in script
    rows = _rows(store, cell.id)
    assert sorted((r["test_dataset"], r["rerank"]) for r in rows) == sorted(expected_rows(cell))
    nodes = sorted(
        n.split()[0]
        for n in subprocess.run(
            ["sinfo", "-h", "-N", "-p", "multinode", "-o", "%N"], capture_output=True, text=True
        ).stdout.splitlines()
    )
    assert len(nodes) == 2
    for row in rows:
        assert row["world_size"] == 2 and row["nodes"] == 2 and sorted(row["hosts"]) == nodes, row
        assert row["executor"] == "slurm" and row["iterations"] == 20
    assert manifest.read(store, cell.id)["state"] == "done" and store.read_state(cell.id)["state"] == "done"
    log = _log(store, cell.id)
    assert "world size 2" in log, log[-2000:]
