"""What a lab trusts for weeks (issue 21), on real files: published rows, leases, checkpoints,
spec ranges and names, file modes, data checks. The end-to-end kills are in test_resume_exact.py
and benchmarks/faults.py."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from harness import lease
from harness.cli import main
from harness.data import Sample
from harness.data.cues import check_files
from harness.data.files import make_once
from harness.engine import artefact, checkpoint
from harness.spec import load_spec
from harness.status import cell_statuses, is_done
from harness.store import SCHEMA, Store, atomic_write

REPO = Path(__file__).resolve().parent.parent
SPEC = """
[grid]
name = "rel"
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]

[train]
input_size = [32, 16]
iterations = 2
ids_per_batch = 4
images_per_id = 2
{extra}

[method_options.baseline]
pretrained = false
{options}
"""


def spec_file(tmp_path, extra: str = "", name: str = "rel.toml", options: str = "") -> Path:
    path = tmp_path / name
    path.write_text(SPEC.format(extra=extra, options=options))
    return path


def row(cell_id: str, test: str, rerank: bool, run_id: str | None, mAP: float = 0.5) -> dict:
    r = {name: None for name in SCHEMA.names}
    r.update(schema_version=2, grid="rel", cell_id=cell_id, test_dataset=test, rerank=rerank, run_id=run_id, mAP=mAP)
    return r


# -- 1, 2: what counts as done; rows of one run, published together ------------------------------


@pytest.fixture()
def done_cell(tmp_path):
    cell = load_spec(spec_file(tmp_path)).cells[0]
    store = Store(tmp_path / "store")
    for rerank in (False, True):
        store.stage_row(row(cell.id, "market1501", rerank, "run1"))
    store.publish(cell.id, "run1")
    return store, cell


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign", "other cell", "other run"])
def test_a_damaged_row_is_not_done_and_status_says_why(done_cell, damage):
    store, cell = done_cell
    assert is_done(store, cell)
    path = store.row_path(cell.id, "market1501", True, "run1")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        pq.write_table(pa.table({"x": [1]}), path)
    elif damage == "other cell":
        pq.write_table(pa.Table.from_pylist([row("someone-else", "market1501", True, "run1")], schema=SCHEMA), path)
    else:
        pq.write_table(pa.Table.from_pylist([row(cell.id, "market1501", True, "run0")], schema=SCHEMA), path)
    assert not is_done(store, cell)
    (status,) = cell_statuses([cell], store)
    assert status.state == "damaged" and str(path) in status.detail
    assert [r["rerank"] for r in store.read().rows] == [False] and any(str(path) in p for p in store.read().problems)


def test_rows_are_published_together_and_only_from_one_run(done_cell):
    store, cell = done_cell
    # A rerun (--force) that dies after staging one row: the published set stays whole, all of run1.
    store.stage_row(row(cell.id, "market1501", False, "run2", mAP=0.9))
    rows = store.read().rows
    assert {r["run_id"] for r in rows} == {"run1"} and [r["mAP"] for r in rows] == [0.5, 0.5] and is_done(store, cell)
    # The next run takes the cell: what the dead run staged is cleared, then its own set replaces run1's.
    assert store.clean_cell(cell.id) == [store.root / "rows" / cell.id / "run2"]
    for rerank in (False, True):
        store.stage_row(row(cell.id, "market1501", rerank, "run3", mAP=0.7))
    store.publish(cell.id, "run3")
    assert {(r["run_id"], r["mAP"]) for r in store.read().rows} == {("run3", 0.7)} and len(store.read().rows) == 2
    assert sorted(p.name for p in (store.root / "rows" / cell.id).iterdir()) == ["published.json", "run3"]


def test_embeddings_are_read_only_from_the_published_run(done_cell, tmp_path):
    from harness.store import Embeddings

    store, cell = done_cell
    e = Embeddings(*(np.zeros((2, 3), np.float32),) * 2, *(np.arange(2),) * 4)
    store.write_embeddings(cell.id, "market1501", e, "run1")
    assert store.read_embeddings(cell.id, "market1501").query.shape == (2, 3)
    other = store.write_embeddings(cell.id, "market1501", e, "run2")  # another run's, placed as if it were run1's
    os.replace(other, store.embeddings_path(cell.id, "market1501", "run1"))
    with pytest.raises(ValueError, match="of run 'run2', not of the published run 'run1'"):
        store.read_embeddings(cell.id, "market1501")


def test_schema_1_rows_still_count(tmp_path):
    cell = load_spec(spec_file(tmp_path)).cells[0]
    store = Store(tmp_path / "store")
    for rerank in (False, True):
        store.write_row({**row(cell.id, "market1501", rerank, None), "schema_version": 1})
    assert is_done(store, cell) and len(store.read().rows) == 2


# -- 3: leases ------------------------------------------------------------------------------------


def test_a_live_lease_keeps_other_runs_out_a_dead_one_is_taken_over(tmp_path):
    a = lease.Lease(tmp_path, "run-a", "run-a")
    assert a.try_acquire() is None
    b = lease.Lease(tmp_path, "run-b", "run-b")
    held = b.try_acquire()
    assert held is not None and held.run_id == "run-a" and "pid" in held.describe()
    assert a.renew() and lease.read(tmp_path).token == a.token
    # a holder on this host whose process is gone: stale at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = lease.read(tmp_path).record
    (tmp_path / "lease.json").write_text(__import__("json").dumps({**record, "pid": dead.pid}))
    assert b.try_acquire() is None and lease.read(tmp_path).run_id == "run-b"
    assert not a.renew()  # a learns it lost the lease
    # a holder elsewhere whose heartbeat is older than the ttl: stale too
    record = lease.read(tmp_path).record
    (tmp_path / "lease.json").write_text(
        __import__("json").dumps({**record, "host": "elsewhere", "heartbeat_at": time.time() - 10_000})
    )
    c = lease.Lease(tmp_path, "run-c", "run-c")
    assert c.try_acquire() is None
    # the same owner (a requeued SLURM job) takes it over while it looks alive
    d = lease.Lease(tmp_path, "slurm-7.1", "run-c")
    assert d.try_acquire() is None and lease.read(tmp_path).run_id == "slurm-7.1"
    d.release()
    assert lease.read(tmp_path) is None and not list(tmp_path.glob(".*.tmp"))


def test_a_holder_that_is_a_zombie_is_dead(tmp_path):
    """A run killed from outside can leave its processes as zombies that nobody reaps (PID 1 in a
    container is often not an init): signal 0 still reaches them, but their lease is stale."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.05)
    try:
        os.kill(zombie.pid, 0)  # still there for signal 0 ...
        a = lease.Lease(tmp_path, "run-a", "run-a")
        assert a.try_acquire() is None
        record = lease.read(tmp_path).record
        (tmp_path / "lease.json").write_text(__import__("json").dumps({**record, "pid": zombie.pid}))
        assert lease.read(tmp_path).stale()  # ... but not alive
        assert lease.Lease(tmp_path, "run-b", "run-b").try_acquire() is None
    finally:
        zombie.wait()


def test_status_shows_who_holds_a_cell_and_run_leaves_it_alone(tmp_path, capsys):
    spec = spec_file(tmp_path)
    cell = load_spec(spec).cells[0]
    store = Store(tmp_path / "store")
    held = lease.Lease(store.cell_dir(cell.id), "other-run", "other-run").heartbeat()
    assert held.try_acquire() is None
    try:
        assert main(["status", str(spec), "--store", str(store.root)]) == 0
        out = capsys.readouterr().out
        assert "running" in out and "held by run other-run on " + socket.gethostname() in out
        assert main(["run", str(spec), "--store", str(store.root), "--reports", str(tmp_path / "reports")]) == 0
        out = capsys.readouterr().out
        assert f"cell {cell.id} skipped: held by run other-run" in out and "Running" not in out
    finally:
        held.release()


# -- 4, 5: checkpoints ------------------------------------------------------------------------------


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


PWNED = Path("/tmp") / f"reidbench-pwned-{os.getpid()}"


def tiny_state(model, step):
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return checkpoint.capture(model, optimizer, scheduler, step, 0), optimizer, scheduler


def test_checkpoints_run_no_code_and_bad_ones_fall_back_to_the_previous(tmp_path):
    model = torch.nn.Linear(4, 3)
    sink = checkpoint.FileSink(tmp_path / "checkpoint.pt")
    for step in (5, 10):
        state, optimizer, scheduler = tiny_state(model, step)
        sink.save(state, step)
    assert sink.path.is_file() and sink.previous.is_file()
    PWNED.unlink(missing_ok=True)
    sink.path.write_bytes(pickle.dumps({"step": Payload()}))  # a crafted checkpoint.pt
    logged = []
    step = checkpoint.resume(
        sink, model, optimizer, scheduler, rank=0, world_size=1, phase_of=lambda s: 0, log=logged.append
    )
    assert not PWNED.exists(), "the checkpoint's payload ran"
    assert step == 5 and len(logged) == 1 and str(sink.path) in logged[0] and "moved aside" in logged[0]
    assert list(tmp_path.glob("checkpoint.pt.bad-*"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other model"])
def test_a_bad_checkpoint_alone_means_a_fresh_start_not_a_dead_cell(tmp_path, damage):
    model = torch.nn.Linear(4, 3)
    sink = checkpoint.FileSink(tmp_path / "checkpoint.pt")
    state, optimizer, scheduler = tiny_state(torch.nn.Linear(4, 5) if damage == "other model" else model, 7)
    sink.save(state, 7)
    if damage == "garbage":
        sink.path.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        sink.path.write_bytes(sink.path.read_bytes()[:300])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logged = []
    assert (
        checkpoint.resume(
            sink, model, optimizer, scheduler, rank=0, world_size=1, phase_of=lambda s: 0, log=logged.append
        )
        == 0
    )
    assert len(logged) == 1 and "\n" not in logged[0] and not sink.path.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched: a clean fresh start
    if damage == "other model":
        assert "another shape" in logged[0]


def test_a_full_disk_skips_the_checkpoint_with_the_space_it_needs(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (needs root in a machine that allows mounts)")
    try:
        state, _, _ = tiny_state(torch.nn.Linear(512, 1024), 3)  # about 6 MiB with Adam's moments
        with pytest.raises(
            checkpoint.NotWritten,
            match=r"no space left on .*small for the checkpoint checkpoint.pt \(needs about \d+ MiB",
        ):
            checkpoint.save(disk / "checkpoint.pt", state)
        assert list(disk.iterdir()) == []  # nothing half-written left behind
        with pytest.raises(OSError, match="no space left on .*small to write .*big.bin"):
            atomic_write(disk / "big.bin", lambda tmp: Path(tmp).write_bytes(b"x" * 2**21))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_at_the_kept_model_is_an_oserror_that_leaves_nothing(tmp_path):
    """safetensors reports a full disk as its own error; the cell (harness/engine/cell.py) catches
    OSError, warns and writes its rows without the model (benchmarks/faults.py, "disk full")."""
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root in a machine that allows mounts)")
    try:
        store = Store(disk / "store")
        big = torch.nn.Linear(1024, 1024)  # 4 MiB of weights
        with pytest.raises(OSError, match=r"no space left on .*small.* to write .*model.safetensors"):
            artefact.save(store, "c0ffee", big, {"method": "baseline"})
        artefact.discard(store, "c0ffee")
        assert not store.model_path("c0ffee").exists() and not store.model_info_path("c0ffee").exists()
        assert [p for p in disk.rglob("*") if p.is_file()] == []  # no temporary file left behind
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# -- 7: data checks ---------------------------------------------------------------------------------


def test_data_check_decodes_images_and_finds_non_finite_cues(tmp_path):
    good, cut = tmp_path / "0001_c1_000.jpg", tmp_path / "0002_c1_000.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), np.uint8)).save(good, quality=95)
    cut.write_bytes(good.read_bytes()[:-200])  # a good header, a truncated body
    with Image.open(cut) as image:
        assert image.size == (32, 64)  # opening reads the header only: the old check passed it
    (tmp_path / "cues" / "parsing").mkdir(parents=True)
    probabilities = np.full((5, 64, 32), 0.2, np.float32)
    probabilities[0, :3] = np.nan
    np.save(tmp_path / "cues" / "parsing" / "0001_c1_000.npy", probabilities)
    samples = [Sample(str(good), 1, 1, cue_key="0001_c1_000"), Sample(str(cut), 2, 1, cue_key="0002_c1_000")]
    problems = check_files(samples, tmp_path, ("parsing",))
    assert any(kind == "image" and str(cut) in message and "decode" in message for kind, message in problems)
    assert any(kind == "parsing" and "96 NaN or infinite" in message for kind, message in problems)


# -- 8, 9, 11: specs and paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, key",
    [
        ("lr = -1", "lr"),
        ("lr = nan", "lr"),
        ("weight_decay = -1", "weight_decay"),
        ("momentum = nan", "momentum"),
        ("warmup_factor = -1", "warmup_factor"),
        ("gamma = -3", "gamma"),
        ("padding = -10", "padding"),
        ("last_stride = 7", "last_stride"),  # method options
        ("triplet_margin = -1", "triplet_margin"),
    ],
)
def test_values_that_would_train_wrongly_are_refused_with_their_line(tmp_path, capsys, extra, key):
    option = key in ("last_stride", "triplet_margin")
    path = spec_file(tmp_path, "" if option else extra, options=extra if option else "")
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(extra))
    assert f"line {line}: {key}" in err and "Traceback" not in err


def test_other_ranges_sizes_and_names(tmp_path, capsys):
    cases = {
        "images_per_id = 1": "images_per_id must be at least 2: the triplet loss of baseline",
        "[slurm]\ntime = -5": "time = -5 must be at least 1",
        "[slurm]\narray_parallelism = 0": "array_parallelism = 0 must be at least 1",
        '[slurm]\nextra = ["--x=1\\ntouch pwned"]': "holds a control character",
        "[resources]\nworld_size = 100000": "world_size = 100,000 is above 4,096",
    }
    for extra, message in cases.items():
        text = SPEC.format(extra="", options="")
        text = text.replace("images_per_id = 2", extra) if extra.startswith("images") else text + extra + "\n"
        path = tmp_path / "case.toml"
        path.write_text(text)
        assert main(["run", str(path), "--dry-run"]) == 2, extra
        assert message in capsys.readouterr().err, extra
    big = spec_file(tmp_path, "").read_text().replace("iterations = 2", "iterations = 100000000")
    (tmp_path / "big.toml").write_text(big)
    assert main(["run", str(tmp_path / "big.toml"), "--dry-run"]) == 2
    assert "allow_large = true" in capsys.readouterr().err
    (tmp_path / "big.toml").write_text(big + "[resources]\nallow_large = true\n")
    assert main(["run", str(tmp_path / "big.toml"), "--dry-run"]) == 0
    capsys.readouterr()
    for seeds in ("[-1]", "[4611686018427387904]"):
        (tmp_path / "seed.toml").write_text(
            SPEC.format(extra="", options="").replace(
                'train_datasets = ["market1501"]', f'train_datasets = ["market1501"]\nseeds = {seeds}'
            )
        )
        assert (
            main(["run", str(tmp_path / "seed.toml"), "--dry-run"]) == 2 and "out of range" in capsys.readouterr().err
        )
    for name in ("../x", "/tmp/abs", "a\\u0000b", "x'\\ntouch y", ""):
        (tmp_path / "name.toml").write_text(
            SPEC.format(extra="", options="").replace('name = "rel"', f'name = "{name}"')
        )
        assert main(["run", str(tmp_path / "name.toml"), "--dry-run"]) == 2, name
        assert "may hold only letters, digits" in capsys.readouterr().err
    assert main(["run", str(spec_file(tmp_path)), "--dry-run", "--sbatch", "--exclude=n1\nrm -rf x"]) == 2
    assert "--sbatch" in capsys.readouterr().err


def test_paths_that_cannot_be_used_are_one_paragraph_errors(tmp_path, capsys):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["run", str(binary), "--dry-run"]) == 2 and "not UTF-8" in capsys.readouterr().err
    spec = spec_file(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(spec), "--store", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["run", str(spec), "--store", str(tmp_path / "s"), "--reports", str(tmp_path / "afile" / "r")]) == 2
    assert "--reports" in capsys.readouterr().err


# -- 10: a store a team shares ----------------------------------------------------------------------


def test_written_files_follow_the_umask_so_a_group_can_share_the_store(tmp_path):
    old = os.umask(0o002)
    try:
        store = Store(tmp_path)
        store.write_state("c", "done")
        store.stage_row(row("c", "market1501", False, "r1"))
        store.publish("c", "r1")
        state, _, _ = tiny_state(torch.nn.Linear(2, 2), 1)
        checkpoint.save(tmp_path / "checkpoint.pt", state)
        cache = make_once(tmp_path / "cache" / "synthetic", lambda folder: (folder / "a.jpg").write_bytes(b"x"))
    finally:
        os.umask(old)
    for path in (
        store.cell_dir("c") / "state.json",
        store.row_path("c", "market1501", False, "r1"),
        store.root / "rows" / "c" / "published.json",
        tmp_path / "checkpoint.pt",
        cache / "a.jpg",
    ):
        assert path.stat().st_mode & 0o777 == 0o664, path
    assert cache.stat().st_mode & 0o777 == 0o775
