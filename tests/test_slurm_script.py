"""The SLURM executor without a cluster: the #SBATCH plan and the script submitit writes against
golden files (as submitit's own tests check its sbatch string), and sbatch's refusals, as real
SLURM prints them, turned into one line that names the setting.

The script test puts stand-ins for sbatch, srun, squeue, sinfo and scontrol first on PATH: the real
`submit` runs (submitit included), and the stand-in sbatch keeps the script it is handed and answers
the way sbatch does. REIDBENCH_UPDATE_GOLDEN=1 rewrites the golden files.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from harness import manifest
from harness.errors import UserError
from harness.executors.slurm import master_port, refusal, sbatch_lines, sbatch_parameters, submit
from harness.spec import load_spec
from harness.store import Store

GOLDEN = Path(__file__).parent / "golden"

# Every [slurm] setting and a 2-node GPU job, so that every #SBATCH line the executor can write shows.
SETTINGS = {
    "grid": {"seeds": [0, 1]},
    "resources": {"world_size": 8, "nodes": 2, "gpus_per_node": 4, "device": "cuda"},
    "slurm": {
        "partition": "gpu",
        "account": "vision",
        "qos": "high",
        "constraint": "a100",
        "time": 120,
        "mem": "64G",
        "cpus_per_task": 8,
        "extra": ["--exclude=node7", "--exclusive"],
        "array_parallelism": 16,
        "max_requeues": 2,
        "signal_delay_s": 120,
        "setup": ["module load cuda/12.1", "source .venv/bin/activate"],
    },
}


def _check_golden(name: str, text: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("REIDBENCH_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def _stand_ins(folder: Path, sbatch: str) -> Path:
    """Executables standing in for SLURM's commands; `sbatch` is the body of the sbatch stand-in."""
    folder.mkdir()
    commands = {
        "sbatch": sbatch,
        "srun": "exit 0",  # submitit only looks for it
        "squeue": "exit 0",  # no jobs
        "sinfo": 'echo "debug*  up  infinite  1  idle  node1"',
        "scontrol": 'echo "MaxArraySize            = 1001"',
    }
    for name, body in commands.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return folder


def test_the_sbatch_plan_matches_the_golden_file(make_spec):
    spec = load_spec(make_spec("golden", **SETTINGS))
    lines = sbatch_lines(sbatch_parameters(spec.name, spec.resources, spec.slurm), len(spec.cells))
    _check_golden("sbatch-plan.txt", "\n".join(lines) + "\n")


def test_the_script_submitit_writes_matches_the_golden_file_and_the_plan(make_spec, tmp_path, monkeypatch):
    keep = 'cp "$1" "$(dirname "$0")/submitted.sh"\necho "Submitted batch job 4242"'
    bin_ = _stand_ins(tmp_path / "bin", keep)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    spec = load_spec(make_spec("golden", **SETTINGS))
    store = Store(tmp_path / "store")
    records = submit(spec.cells, spec.resources, spec.slurm, store, log=lambda _: None)

    script = (bin_ / "submitted.sh").read_text()
    for root in {str(tmp_path.resolve()), str(tmp_path)}:
        script = script.replace(root, "/TMP")
    _check_golden("sbatch-script.sh", script.replace(shlex.quote(sys.executable), "PYTHON"))
    # what --dry-run shows is what is submitted
    plan = sbatch_lines(sbatch_parameters(spec.name, spec.resources, spec.slurm), len(spec.cells))
    assert {line for line in plan if line.startswith("#SBATCH")} <= set(script.splitlines())
    assert {line.removeprefix("# setup: ") for line in plan if line.startswith("# setup: ")} <= set(script.splitlines())
    assert [r["job_id"] for r in records] == ["4242_0", "4242_1"]
    assert [manifest.read(store, c.id)["state"] for c in spec.cells] == ["submitted", "submitted"]


# What real sbatch prints (SLURM 23.x; the first five from the local test cluster, the rest as
# sites report them), and the one line `reidbench run` shows for it.
REFUSALS = [
    (
        (
            "sbatch: error: invalid partition specified: nope\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified"
        ),
        "invalid partition specified: nope; Invalid partition name specified (check [slurm] partition / --partition)",
    ),
    (
        "sbatch: error: Invalid generic resource (gres) specification",
        "Invalid generic resource (gres) specification (check [slurm] gres or [resources] gpus_per_node / --gres, --gpus-per-node)",
    ),
    (
        "sbatch: error: Batch job submission failed: Invalid feature specification",
        "Invalid feature specification (check [slurm] constraint / --constraint)",
    ),
    ("sbatch: error: Invalid --time specification", "Invalid --time specification (check [slurm] time / --time)"),
    (
        "sbatch: unrecognized option '--bogus'\nTry \"sbatch --help\" for more information",
        "unrecognized option '--bogus' (check [slurm] extra / --sbatch)",
    ),
    (
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
        "Invalid account or account/partition combination specified (check [slurm] account / --account)",
    ),
    (
        "sbatch: error: Batch job submission failed: Invalid qos specification",
        "Invalid qos specification (check [slurm] qos / --qos)",
    ),
    (
        (
            "sbatch: error: QOSMaxGRESPerUser\nsbatch: error: Batch job submission failed: Job violates accounting/QOS "
            "policy (job submit limit, user's size and/or time limits)"
        ),
        (
            "QOSMaxGRESPerUser; Job violates accounting/QOS policy (job submit limit, user's size and/or time limits) "
            "(check [slurm] qos, account and time, and the resources asked, against the site's limits)"
        ),
    ),
    (
        "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
        "Requested time limit is invalid (missing or exceeds some limit) (check [slurm] time / --time)",
    ),
    (
        (
            "sbatch: error: Memory specification can not be satisfied\n"
            "sbatch: error: Batch job submission failed: Requested node configuration is not available"
        ),
        "Memory specification can not be satisfied; Requested node configuration is not available (check [slurm] mem / --mem)",
    ),
    (
        "sbatch: error: Batch job submission failed: Requested node configuration is not available",
        (
            "Requested node configuration is not available (check [resources] nodes, world_size, gpus_per_node or "
            "[slurm] cpus_per_task, mem)"
        ),
    ),
    (
        "sbatch: error: Batch job submission failed: More processors requested than permitted",
        "More processors requested than permitted (check [resources] nodes, world_size or [slurm] cpus_per_task / --cpus-per-task)",
    ),
    (
        'sbatch: error: Invalid numeric value "0" for --cpus-per-task.',
        'Invalid numeric value "0" for --cpus-per-task. (check [slurm] cpus_per_task / --cpus-per-task)',
    ),
    (
        "sbatch: error: Batch job submission failed: Invalid job array specification",
        "Invalid job array specification (check [slurm] array_parallelism / --array-parallelism)",
    ),
    (
        "sbatch: error: Batch job submission failed: Invalid node name specified",
        "Invalid node name specified (check [slurm] extra (--nodelist, --exclude) / --sbatch)",
    ),
    (
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
        "Unable to contact slurm controller (connect failure)",
    ),
]


@pytest.mark.parametrize("stderr,expected", REFUSALS, ids=[e.split(" (check")[0][:40] for _, e in REFUSALS])
def test_sbatch_refusals_become_one_line_naming_the_setting(stderr, expected):
    assert refusal(stderr) == f"SLURM refused the job: {expected}"


def test_a_refused_submission_is_a_user_error_and_records_nothing(make_spec, tmp_path, monkeypatch):
    stderr, expected = REFUSALS[0]
    bin_ = _stand_ins(tmp_path / "bin", f"cat >&2 <<'EOF'\n{stderr}\nEOF\nexit 1")
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    spec = load_spec(make_spec(**SETTINGS))
    store = Store(tmp_path / "store")
    with pytest.raises(UserError) as refused:
        submit(spec.cells, spec.resources, spec.slurm, store, log=lambda _: None)
    assert str(refused.value) == f"SLURM refused the job: {expected}"
    assert manifest.read_all(store) == {}


def test_the_rendezvous_port_is_the_jobs_own_and_outside_the_ephemeral_range():
    # submitit's default draws from 20000-60000, mostly the range the kernel hands to outgoing
    # connections: rank 0 then cannot listen (EADDRINUSE) and its peers wait out the timeout.
    ports = {master_port(f"{job}_{task}") for job in range(100, 400) for task in range(3)}
    assert all(22000 <= p < 32768 for p in ports) and len(ports) > 850  # spread, not one port for all
    assert master_port("114_0") == master_port("114_0") != master_port("114_1")
