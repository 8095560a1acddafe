"""How long submitting a 2,000-cell grid to SLURM takes, against a bare `sbatch --array` of the same size.

    python benchmarks/slurm_submit.py [--cells 2000]

Needs a SLURM cluster (scripts/slurm-local.sh up). The grid is jobs/smoke.toml, the real smoke spec,
with four backbones and as many seeds as make up --cells; its [slurm] section gains `--hold`, so
nothing runs. Times, in one run, each in-process after the imports (target: the submission <= 10 s):
  1. `reidbench run SPEC --executor slurm --dry-run` (spec, cell ids, status of every cell, sbatch plan);
  2. `reidbench run SPEC --executor slurm`: status, pre-flight (datasets, cue maps, weights) and the
     submission of the grid as job arrays; then the arrays are cancelled;
  3. `reidbench status SPEC` on the submitted grid (one squeue query for the grid);
  4. the reference: `sbatch --array` of the same number of held tasks (in arrays of the cluster's
     MaxArraySize), cancelled too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from harness.cli import main
from harness.executors.slurm import max_array_size

BACKBONES = ["resnet18", "resnet50", "resnet50m", "resnet152"]
SMOKE = Path(__file__).resolve().parent.parent / "jobs" / "smoke.toml"


def grid_spec(cells: int) -> str:
    """jobs/smoke.toml with four backbones and enough seeds for `cells` cells, held on submission."""
    seeds = -(-cells // len(BACKBONES))
    text = SMOKE.read_text()
    text = re.sub(r"^name = .*$", f'name = "bench{cells}"', text, count=1, flags=re.M)
    text = re.sub(r"^backbones = .*$", f"backbones = {BACKBONES}".replace("'", '"'), text, count=1, flags=re.M)
    text = re.sub(r"^seeds = .*$", f"seeds = {list(range(seeds))}", text, count=1, flags=re.M)
    return text + '\n[slurm]\nextra = ["--hold"]\n'


def timed(function) -> tuple[float, str]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start, out.getvalue()


def array_ids(store: Path) -> set[str]:
    return {p.read_text().split('"array_job_id": "')[1].split('"')[0] for p in (store / "manifest").glob("*.json")}


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2000)
    n = parser.parse_args().cells
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        spec_path = root / "bench.toml"
        spec_path.write_text(grid_spec(n))
        store = root / "store"
        args = ["run", str(spec_path), "--store", str(store), "--executor", "slurm"]
        dry, plan = timed(lambda: main([*args, "--dry-run"]))
        assert f"{n} cell(s) in" in plan, plan[-2000:]
        real, said = timed(lambda: main(args))
        arrays = array_ids(store)
        try:
            assert f"Submitted {n} of {n} cell(s)" in said, said[-2000:]
            status, shown = timed(lambda: main(["status", str(spec_path), "--store", str(store)]))
        finally:
            subprocess.run(["scancel", *arrays], check=True)
        chunk = max_array_size()

        def reference():
            for first in range(0, n, chunk):
                size = min(chunk, n - first)
                out = subprocess.run(
                    [
                        "sbatch",
                        "--parsable",
                        f"--array=0-{size - 1}",
                        "--hold",
                        "-n",
                        "2",
                        "-o",
                        "/dev/null",
                        "--wrap",
                        "true",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                subprocess.run(["scancel", out.stdout.strip().split(";")[0]], check=True)

        bare, _ = timed(reference)
    print(
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPU(s) (other users' processes included)"
    )
    print(
        f"cells: {n} (jobs/smoke.toml x {len(BACKBONES)} backbones x {-(-n // len(BACKBONES))} seeds), in {len(arrays)} job array(s)"
    )
    print(f"reidbench run --executor slurm --dry-run: {dry:.2f} s")
    print(f"reidbench run --executor slurm (status, pre-flight, submission): {real:.2f} s   (target <= 10 s)")
    print(f"reidbench status: {status:.2f} s")
    print(f"reference sbatch --array, {n} held tasks: {bare:.2f} s")
    print(f"ratio submission / bare sbatch: {real / bare:.1f}x")


if __name__ == "__main__":
    main_benchmark()
