"""How long submitting a 200-cell grid to SLURM takes, against a bare `sbatch --array` of the same size.

    python benchmarks/slurm_submit.py [--cells 200]

Needs a SLURM cluster (scripts/slurm-local.sh up). Times, in one run:
  1. `reidbench run SPEC --executor slurm --dry-run` (spec parsing, cell ids, sbatch plan), in-process;
  2. the real submission of the grid as one job array, held (--hold) so nothing runs, then cancelled;
  3. the reference: `sbatch --array=0-N --hold --wrap true`, cancelled too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import subprocess
import tempfile
import time
from pathlib import Path

from harness.cli import main
from harness.executors.slurm import submit
from harness.spec import load_spec
from harness.store import Store

SPEC = """
[grid]
name = "bench{n}"
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]
seeds = {seeds}

[train]
input_size = [64, 32]
iterations = 30
ids_per_batch = 4
images_per_id = 2
pretrained = false

[synthetic]
ids = 16

[resources]
world_size = 2
device = "cpu"
"""


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200)
    n = parser.parse_args().cells
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        spec_path = root / "bench.toml"
        spec_path.write_text(SPEC.format(n=n, seeds=list(range(n))))
        store = Store(root / "store")
        args = ["run", str(spec_path), "--store", str(store.root), "--executor", "slurm", "--dry-run"]
        with contextlib.redirect_stdout(io.StringIO()) as plan:
            dry = timed(lambda: main(args))
        assert f"{n} cell(s) in 1 job array(s)" in plan.getvalue(), plan.getvalue()[-2000:]

        spec = load_spec(spec_path)
        held = dataclasses.replace(spec.slurm, extra=("--hold",))
        records: list = []
        real = timed(lambda: records.extend(submit(spec.cells, spec.resources, held, store, log=lambda _: None)))
        subprocess.run(["scancel", records[0]["array_job_id"]], check=True)
        assert len(records) == n and len({r["array_job_id"] for r in records}) == 1

        def reference():
            out = subprocess.run(["sbatch", "--parsable", f"--array=0-{n - 1}", "--hold", "-n", "2", "-o", "/dev/null", "--wrap", "true"],
                                 capture_output=True, text=True, check=True)
            subprocess.run(["scancel", out.stdout.strip().split(";")[0]], check=True)

        bare = timed(reference)
    print(f"cells: {n}")
    print(f"reidbench run --executor slurm --dry-run: {dry:.2f} s")
    print(f"reidbench submission (one held array, {n} pickles + manifest): {real:.2f} s")
    print(f"reference sbatch --array=0-{n - 1} --hold: {bare:.2f} s")
    print(f"ratio submission / bare sbatch: {real / bare:.1f}x")


if __name__ == "__main__":
    main_benchmark()
