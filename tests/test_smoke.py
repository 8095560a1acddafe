"""End to end through the installed `reidbench` command: real DDP processes (gloo), real files.

The smoke grid trains the baseline on synthetic Market-1501; the same grid with no training step
gives the untrained model's numbers, which the trained ones must beat by far.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.spec import load_spec
from harness.store import Store
from tests.helpers import reidbench

REPO = Path(__file__).resolve().parent.parent
SMOKE = (REPO / "jobs" / "smoke.toml").read_text()

pytestmark = pytest.mark.slow


def smoke_variant(root: Path, name: str, **settings: str) -> Path:
    """jobs/smoke.toml as grid `name`, with some `key = value` lines replaced."""
    text = SMOKE.replace('name = "smoke"', f'name = "{name}"')
    for key, value in settings.items():
        text, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        assert found == 1, key
    path = root / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "REIDBENCH_CACHE": str(root / "cache")}
    return root, env


@pytest.fixture(scope="module")
def smoke_runs(work):
    """Run the smoke grid, then the same grid untrained (iterations = 0), into one store."""
    root, env = work
    trained_spec = root / "smoke.toml"
    trained_spec.write_text(SMOKE)
    untrained_spec = smoke_variant(root, "untrained", iterations="0")
    runs = {
        name: reidbench("run", str(spec), "--store", "store", env=env, cwd=root)
        for name, spec in (("trained", trained_spec), ("untrained", untrained_spec))
    }
    for name, run in runs.items():
        assert run.returncode == 0, f"{name} run failed:\n{run.stdout}\n{run.stderr}"
    return root, env, runs


def only_row(store: Store, spec: Path, rerank: bool = False) -> dict:
    """The cell's plain (or re-ranked) row; a one-test-dataset cell has exactly these two."""
    (cell,) = load_spec(spec).cells
    rows = [r for r in store.read().rows if r["cell_id"] == cell.id]
    assert sorted(r["rerank"] for r in rows) == [False, True], rows
    return next(r for r in rows if r["rerank"] is rerank)


def test_training_beats_an_untrained_model_by_far(smoke_runs):
    root, _, _ = smoke_runs
    store = Store(root / "store")
    trained, untrained = only_row(store, root / "smoke.toml"), only_row(store, root / "untrained.toml")
    message = f"trained mAP {trained['mAP']:.3f} (rank-1 {trained['rank1']:.3f}) vs untrained mAP {untrained['mAP']:.3f} (rank-1 {untrained['rank1']:.3f})"
    print(message)
    assert (
        untrained["iterations"] == 0
        and trained["iterations"] == load_spec(root / "smoke.toml").cells[0].train.iterations
    )
    assert trained["mAP"] >= untrained["mAP"] + 0.15 and trained["mAP"] >= 2 * untrained["mAP"], message


def test_rows_carry_identity_metrics_and_provenance(smoke_runs):
    root, _, runs = smoke_runs
    row = only_row(Store(root / "store"), root / "smoke.toml")
    assert (row["method"], row["variant"], row["backbone"], row["grid"]) == ("baseline", "bnneck", "resnet18", "smoke")
    assert row["synthetic"] is True and row["rerank"] is False and row["protocol"] == "market"
    assert row["world_size"] == 2 and row["executor"] == "local" and row["device"] == "cpu"
    assert len(row["cmc"]) == 50 and row["cmc"][0] == row["rank1"] and 0 <= row["mINP"] <= row["mAP"] <= 1
    assert row["num_valid_queries"] == row["num_query"] > 0
    assert row["train_images_per_second"] > 0 and row["started_at"] <= row["finished_at"]
    assert row["torch_version"] and row["hostname"]
    assert json.loads(row["config"])["cell"]["train"]["iterations"] == row["iterations"]
    assert row["cell_id"] in runs["trained"].stdout  # the results table is printed ...
    assert row["cell_id"] in (root / "reports" / "smoke.md").read_text()  # ... and written as Markdown
    reranked = only_row(Store(root / "store"), root / "smoke.toml", rerank=True)
    assert reranked["protocol"] == "market" and reranked["num_query"] == row["num_query"]
    assert 0 <= reranked["mINP"] <= reranked["mAP"] <= 1 and reranked["mAP"] != row["mAP"]


def test_second_run_skips_done_cells(smoke_runs):
    root, env, _ = smoke_runs
    store = Store(root / "store")
    row = only_row(store, root / "smoke.toml")
    row_file = store.row_path(row["cell_id"], row["test_dataset"], False, row["run_id"])
    before = row_file.stat().st_mtime_ns
    again = reidbench("run", "smoke.toml", "--store", "store", env=env, cwd=root)
    assert again.returncode == 0 and "are done" in again.stdout and "Running" not in again.stdout
    assert row_file.stat().st_mtime_ns == before


def test_dry_run_and_status_list_cells_with_their_state(smoke_runs):
    root, env, _ = smoke_runs
    (cell,) = load_spec(root / "smoke.toml").cells
    dry = reidbench("run", "smoke.toml", "--store", "store", "--dry-run", "--force", env=env, cwd=root)
    assert dry.returncode == 0 and cell.id in dry.stdout and "done" in dry.stdout and "1 to run" in dry.stdout
    status = reidbench("status", "smoke.toml", "--store", "store", env=env, cwd=root)
    assert status.returncode == 0 and re.search(rf"{cell.id}.*done", status.stdout)
    fresh = reidbench("status", "smoke.toml", "--store", "elsewhere", env=env, cwd=root)
    assert re.search(rf"{cell.id}.*not started", fresh.stdout)
    report = reidbench("report", "--store", "store", env=env, cwd=root)
    assert report.returncode == 0 and cell.id in (root / "reports" / "results.md").read_text()
    # The baseline (BNNeck) is no paper's row: SSP-ReID Table 3's "ResNet" row is its own backbone-only
    # model (ssp-reid:backbone), so that row shows the published number and nothing measured.
    resnet = next(
        line for line in (root / "reports" / "ssp-reid.md").read_text().splitlines() if line.startswith("| ResNet ")
    )
    assert " syn " not in resnet and "72.9" in resnet and re.search(r"ssp-reid\s+3\s+0/160", report.stdout)


def test_force_reruns_a_done_cell_and_replaces_its_row(work):
    root, env = work
    spec = smoke_variant(root, "force", backbones='["resnet18"]', iterations="2", input_size="[32, 16]")
    (cell,) = load_spec(spec).cells
    store = Store(root / "forcestore")
    first = reidbench("run", "force.toml", "--store", "forcestore", env=env, cwd=root)
    assert first.returncode == 0, first.stdout + first.stderr
    before = only_row(store, spec)
    first_file = store.row_path(cell.id, "market1501", False, before["run_id"])
    assert first_file.is_file()
    again = reidbench("run", "force.toml", "--store", "forcestore", "--force", env=env, cwd=root)
    assert again.returncode == 0 and "Running 1 of 1 cell(s)" in again.stdout, again.stdout + again.stderr
    after = only_row(store, spec)  # replaced, not duplicated
    assert after["cell_id"] == before["cell_id"] == cell.id
    assert after["started_at"] >= before["finished_at"] and after["run_id"] != before["run_id"]
    assert store.row_path(cell.id, "market1501", False, after["run_id"]).is_file()
    assert not first_file.exists()  # the earlier run's rows are gone once the new run published


def test_non_finite_loss_fails_the_cell_with_step_and_terms_and_writes_no_row(work):
    root, env = work
    spec = smoke_variant(root, "nan", backbones='["resnet18"]', iterations="20", lr="1e30", input_size="[32, 16]")
    run = reidbench("run", "nan.toml", "--store", "nanstore", env=env, cwd=root)
    assert run.returncode == 1, run.stdout + run.stderr
    (cell,) = load_spec(spec).cells
    state = Store(root / "nanstore").read_state(cell.id)
    assert state["state"] == "failed" and re.match(r"loss became non-finite at step \d+: id=", state["reason"]), state
    assert "triplet=" in state["reason"] and "non-finite" in run.stderr
    assert Store(root / "nanstore").read().rows == []
    status = reidbench("status", "nan.toml", "--store", "nanstore", env=env, cwd=root)
    assert re.search(rf"{cell.id}.*failed.*non-finite at step", status.stdout)


def test_missing_dataset_root_is_a_user_error(work):
    root, env = work
    spec = root / "real.toml"
    spec.write_text(SMOKE + '\n[datasets.market1501]\nroot = "no-such-folder"\n')
    run = reidbench("run", "real.toml", "--store", "realstore", env=env, cwd=root)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"expected the folder {root / 'no-such-folder' / 'Market-1501-v15.09.15'}" in run.stderr


def test_a_worker_killed_by_a_signal_fails_the_cell_with_that_signal(work):
    root, env = work
    spec = smoke_variant(
        root, "kill", backbones='["resnet18"]', iterations="100000", input_size="[32, 16]", log_every="1"
    )
    (cell,) = load_spec(spec).cells
    driver = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "kill.toml", "--store", "killstore"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in driver.stdout:  # wait until training runs
            if "step 3:" in line:
                break
        workers = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _parent(p) == driver.pid and b"spawn_main" in (p / "cmdline").read_bytes()
        ]
        assert len(workers) == 2, workers
        os.kill(max(workers), 9)
        out, err = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 1
    state = Store(root / "killstore").read_state(cell.id)
    assert state["state"] == "failed" and "was killed by SIGKILL" in state["reason"], state
    assert "was killed by SIGKILL" in err and Store(root / "killstore").read().rows == []


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
