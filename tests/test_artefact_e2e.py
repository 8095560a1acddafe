"""End to end on synthetic data: a cell keeps its model and curve; a test set added to its spec is
evaluated from the kept model without training (local executor and SLURM); `reidbench eval` on a
done cell and on external weights; `reidbench visrank`, looked at in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.data.synthetic import synthetic_root
from harness.spec import load_spec
from harness.store import Store
from tests.helpers import cluster_spec, reidbench, wait_for
from tests.test_slurm import _DOWN, _submit, work  # noqa: F401  (the fixture cancels the test's jobs)

REPO = Path(__file__).resolve().parent.parent


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REIDBENCH_CACHE": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900
    )


def _add_test_set(spec: Path, names: list[str]) -> None:
    text = spec.read_text()
    spec.write_text(
        text.replace(
            'train_datasets = ["market1501"]', f'train_datasets = ["market1501"]\ntest_datasets = {json.dumps(names)}'
        )
    )


@pytest.mark.slow
def test_a_new_test_set_is_evaluated_from_the_kept_model_without_training(tmp_path, monkeypatch):
    spec = cluster_spec(tmp_path, iterations=6, checkpoint_every=0)
    first = _cli(tmp_path, "run", str(spec), "--store", "store")
    assert first.returncode == 0, first.stdout + first.stderr
    (cell,) = load_spec(spec).cells
    store = Store(tmp_path / "store")
    info = json.loads(store.model_info_path(cell.id).read_text())
    assert (
        info["cell_id"] == cell.id
        and info["trained"]["iterations"] == 6
        and store.model_path(cell.id).stat().st_size > 1e6
    )
    assert not (store.cell_dir(cell.id) / "checkpoint.pt").exists()  # resume checkpoints stay separate, and go
    curve = store.read_metrics(cell.id)
    assert [r["step"] for r in curve] == [5, 6] and {"id", "triplet", "lr", "images_per_second", "phase"} <= set(
        curve[0]
    )
    rows = list(store.cell_rows(cell.id).rows.values())
    assert {r["test_dataset"] for r in rows} == {"market1501"}
    market_map = next(r["mAP"] for r in rows if not r["rerank"])
    assert info["run_id"] == rows[0]["run_id"]  # the kept model names the run whose rows it made
    fingerprints = {json.loads(r["train_fingerprint"])["market1501"]["train"] for r in rows}
    assert len(fingerprints) == 1 and all(set(json.loads(r["test_fingerprint"])) == {"query", "gallery"} for r in rows)
    profiles = len(store.read().profiles)

    _add_test_set(spec, ["market1501", "dukemtmc"])
    assert load_spec(spec).cells[0].id == cell.id  # the test sets are not part of the id
    status = _cli(tmp_path, "status", str(spec), "--store", "store")
    assert "to evaluate" in status.stdout and "no rows for dukemtmc" in status.stdout
    second = _cli(tmp_path, "run", str(spec), "--store", "store")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "on market1501, dukemtmc; no training" in second.stdout and "training baseline" not in second.stdout
    rows = store.cell_rows(cell.id).rows
    assert set(rows) == {(t, rr) for t in ("market1501", "dukemtmc") for rr in (False, True)}
    # the kept model scored every test set again in one run: the cell's rows are that run's, and the same numbers
    assert len({r["run_id"] for r in rows.values()}) == 1 and rows["market1501", False]["mAP"] == market_map
    assert rows["dukemtmc", False]["iterations"] == 6 and rows["dukemtmc", False]["weights"] is None
    assert len(store.read().profiles) == profiles and store.read_metrics(cell.id) == curve  # nothing trained
    assert "done" in _cli(tmp_path, "status", str(spec), "--store", "store").stdout

    # a damaged row is not done; it is recomputed from the kept model, without training (issue 21, item 1)
    published = store.cell_rows(cell.id).rows["dukemtmc", True]
    store.row_path(cell.id, "dukemtmc", True, published["run_id"]).write_bytes(b"PAR1 truncated")
    assert "damaged" in _cli(tmp_path, "status", str(spec), "--store", "store").stdout
    repaired = _cli(tmp_path, "run", str(spec), "--store", "store")
    assert repaired.returncode == 0 and "no training" in repaired.stdout, repaired.stdout + repaired.stderr
    rows = store.cell_rows(cell.id).rows
    assert len(rows) == 4 and rows["market1501", False]["mAP"] == market_map and not store.cell_rows(cell.id).problems

    evaluated = _cli(tmp_path, "eval", cell.id[:6], "--test", "cuhk03-labeled", "--store", "store", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert store.has_row(cell.id, "cuhk03-labeled", False) and store.has_row(cell.id, "cuhk03-labeled", True)
    rows = store.cell_rows(cell.id).rows  # the earlier test sets were scored again in the eval's run
    assert {t for t, _ in rows} == {"market1501", "dukemtmc", "cuhk03-labeled"} and len(
        {r["run_id"] for r in rows.values()}
    ) == 1

    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    market = synthetic_root("market1501", ids=cell.synthetic.ids, seed=cell.synthetic.seed)  # the cell's own test set
    external = _cli(
        tmp_path,
        "eval",
        "--weights",
        str(store.model_path(cell.id)),
        "--method",
        "baseline",
        "--backbone",
        "resnet18",
        "--test",
        "market1501",
        "--data",
        f"market1501={market}",
        "--input",
        "64x32",
        "--store",
        "ext",
    )
    assert external.returncode == 0, external.stderr
    (ext,) = [r for r in Store(tmp_path / "ext").read().rows if not r["rerank"]]
    own = rows["market1501", False]
    assert json.loads(ext["weights"])["layout"] == "reidbench" and ext["iterations"] == 0 and ext["cell_id"] != cell.id
    assert ext["mAP"] == pytest.approx(own["mAP"], abs=1e-6)  # the same weights score the same

    forced = _cli(tmp_path, "run", str(spec), "--store", "store", "--force")
    assert forced.returncode == 0 and "training baseline" in forced.stdout  # --force trains again
    assert not (store.cell_dir(cell.id) / "retrain").exists()


@pytest.mark.slow
def test_visrank_page_with_worst_queries_first_renders_in_chromium(tmp_path):
    spec = cluster_spec(tmp_path, iterations=4, checkpoint_every=0)
    assert _cli(tmp_path, "run", str(spec), "--store", "store").returncode == 0
    (cell,) = load_spec(spec).cells
    run = _cli(tmp_path, "visrank", cell.id, "--test", "market1501", "--worst", "3", "--topk", "5", "--store", "store")
    assert run.returncode == 0, run.stderr
    folder = Store(tmp_path / "store").visrank_dir(cell.id, "market1501")
    page = (folder / "index.html").read_text()
    assert sorted(p.name for p in folder.glob("*.png")) == ["q001.png", "q002.png", "q003.png"]
    aps = [float(a) for a in __import__("re").findall(r"AP ([0-9.]+)% plain", page)]
    assert len(aps) == 3 and aps == sorted(aps) and "worst first" in page and "re-ranked" in page
    report = _cli(tmp_path, "report", "--store", "store", "--out", "rep", "--format", "html")
    index = (tmp_path / "rep" / "html" / "index.html").read_text()
    assert report.returncode == 0 and "../../store/cells/" in index and f"curve-{cell.id}.svg" in index
    if shutil.which("chromium") is None:
        pytest.skip("no headless Chromium here (CI installs it: apt-get install chromium)")
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [str(REPO / "scripts" / "screenshot-report.sh"), str(folder / "index.html"), str(shot), "900x700"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    from PIL import Image

    with Image.open(shot) as image:
        pixels = image.convert("RGB").getcolors(1 << 20)
    colours = {c for _, c in pixels}
    assert (26, 160, 60) in colours or (210, 40, 40) in colours  # the right/wrong borders were drawn on screen


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(_DOWN is not None, reason=_DOWN or "")
def test_slurm_evaluates_a_new_test_set_from_the_kept_model(work):  # noqa: F811
    folder, store = work
    spec = cluster_spec(folder, iterations=4, checkpoint_every=0)
    (cell,) = load_spec(spec).cells
    _submit(spec, folder)
    wait_for(lambda: store.has_row(cell.id, "market1501", True), "the trained cell's rows", timeout=600)
    wait_for(lambda: "done" in reidbench("status", spec, "--store", "store", cwd=folder).stdout, "the cell to be done")
    _add_test_set(spec, ["market1501", "dukemtmc"])
    _submit(spec, folder)
    wait_for(lambda: store.has_row(cell.id, "dukemtmc", True), "the new test set's rows", timeout=600)
    log = "\n".join(p.read_text(errors="replace") for p in (folder / "store" / "slurm").glob("*_log.out"))
    assert "on market1501, dukemtmc; no training" in log
    assert log.count("training baseline") == 1  # trained once, by the first job
