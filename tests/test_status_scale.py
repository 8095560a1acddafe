"""`reidbench status` and `--dry-run` on big grids: one scheduler query per grid, datasets read once.

The timings are in benchmarks/store.py (status of a 2,000-cell grid) and benchmarks/slurm_submit.py;
here, that the shortcuts give what the per-cell way gives.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.engine.cell import training_plans
from harness.executors import slurm
from harness.spec import load_spec

SMOKE = Path(__file__).resolve().parent.parent / "jobs" / "smoke.toml"


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="no SLURM cluster")
def test_one_scontrol_query_gives_what_one_query_per_job_gives():
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--hold", "--array=0-2", "-o", "/dev/null", "--wrap", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if submitted.returncode != 0:
        pytest.skip(f"sbatch refused a held array: {submitted.stderr.strip()}")
    array = submitted.stdout.strip().split(";")[0]
    try:
        every = slurm.job_endings()
        tasks = [f"{array}_{i}" for i in range(3)]  # as submitit names array tasks
        assert [every.get(t) for t in tasks] == [slurm.job_ending(t) for t in tasks]
        assert all(every.get(t) for t in tasks)
        assert {j: every[j] for j in every if "_" not in j} == {j: slurm.job_ending(j) for j in every if "_" not in j}
    finally:
        subprocess.run(["scancel", array], capture_output=True, timeout=60)


def test_dry_run_reads_each_training_set_once_per_grid(tmp_path):
    text = re.sub(r"^seeds = .*$", "seeds = [0, 1, 2]", SMOKE.read_text(), count=1, flags=re.M)
    (tmp_path / "grid.toml").write_text(text)
    cells = load_spec(tmp_path / "grid.toml").cells
    cache: dict = {}
    plans = [training_plans(cell, cache) for cell in cells]
    assert len(cells) == 3 and len(cache) == 1  # three cells, one training set read
    assert plans == [training_plans(cell) for cell in cells]
