"""benchmarks/gpu_check.sh is ready for the first GPU: its dry run lists every step within 8 minutes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"


def test_the_dry_run_prints_every_step_with_its_command_and_runs_nothing(tmp_path):
    out = tmp_path / "figures"
    run = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    steps = dict(re.findall(r"^([\w-]+)\s+\(at most\s+(\d+) s\)", run.stdout, re.M))
    assert list(steps) == [
        "cuda-tests",
        "throughput-off",
        "throughput-on",
        "profile",
        "report",
        "evaluation",
        "smoke-nccl",
        "two-gpus",
        "world-size",
    ], run.stdout
    one_gpu = sum(int(steps[s]) for s in list(steps)[:7])
    assert one_gpu <= 8 * 60, one_gpu  # the budget on one H100 or H200
    for command in (
        "benchmarks/train_throughput.py --device cuda",
        "--precision bf16 --channels-last --compile --data-on-device",
        "--precision fp32 --no-channels-last --no-compile --no-data-on-device",
        f"harness.cli profile --device cuda --backbones resnet50 --steps 20 --warmup 5 --store {out}/store",
        "benchmarks/evaluation.py --device cuda --sizes market",
        f"harness.cli run {out}/smoke-nccl.toml",
    ):
        assert command in run.stdout, (command, run.stdout)
    assert "nothing was run (--dry-run)" in run.stdout
    assert not out.exists()  # nothing written


def test_an_unknown_option_is_refused_with_exit_code_2():
    run = subprocess.run(["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown option --dryrun" in run.stderr
