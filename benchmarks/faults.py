"""The fault suite of issue 21: the reliability review's scenarios end to end on tiny cells.

Each scenario damages a run the way a cluster does (kills at every stage, two runs at once, a
damaged row, bad and malicious checkpoints, a full disk, a read-only store), then runs the grid
again as a user would, and checks the store: exactly the rows expected, all of one run, and
metrics bit-identical to an uninterrupted run. Faults are injected from outside the project: a
`sitecustomize` on PYTHONPATH that SIGKILLs the whole process group at a chosen point.

    PYTHONPATH=. python benchmarks/faults.py [--work DIR] [--only NAME ...]

Prints one line per scenario: outcome, rows expected / present / from one run, resumed step,
metrics equal to the uninterrupted run. Needs root for the tmpfs scenarios (skipped otherwise).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.spec import load_spec  # noqa: E402
from harness.store import Store  # noqa: E402

SPEC = """
[grid]
name = "faults"
methods = ["baseline"]
backbones = ["resnet18"]
train_datasets = ["market1501"]

[train]
input_size = [32, 16]
iterations = 6
ids_per_batch = 4
images_per_id = 2
lr = 1e-3
warmup = 2
milestones = [4]
num_workers = 0
eval_batch_size = 64
log_every = 1
checkpoint_every = 2

[method_options.baseline]
pretrained = false

[synthetic]
ids = 16

[resources]
world_size = 1
device = "cpu"
"""

INJECT = """
import os, signal
fault = os.environ.get("FAULT")
def _die():
    os.killpg(os.getpgrp(), signal.SIGKILL)
if fault == "row":  # after the first row is staged, before the second
    from harness.store import Store
    _stage = Store.stage_row
    def stage_row(self, row):
        path = _stage(self, row)
        _die()
    Store.stage_row = stage_row
elif fault == "checkpoint":  # half-way through writing the checkpoint of step 4
    import torch
    _save = torch.save
    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 4 and hasattr(f, "write"):
            f.write(b"PK partial"); f.flush(); _die()
        return _save(obj, f, *a, **k)
    torch.save = save
"""


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


class Suite:
    def __init__(self, work: Path):
        self.work = work
        (work / "inject").mkdir(parents=True, exist_ok=True)
        (work / "inject" / "sitecustomize.py").write_text(INJECT)
        self.spec = work / "faults.toml"
        self.spec.write_text(SPEC)
        (self.cell,) = load_spec(self.spec).cells
        self.env = {
            **os.environ,
            "REIDBENCH_CACHE": str(work / "cache"),
            "REIDBENCH_LEASE_TTL": "600",
            "PYTHONPATH": f"{work / 'inject'}:{REPO}",
        }
        self.reference: dict | None = None

    def cmd(self, store: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            str(self.spec),
            "--store",
            str(store),
            "--reports",
            str(self.work / "reports"),
            *extra,
        ]

    def run(self, store: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
        env = {**self.env, **({"FAULT": fault} if fault else {})}
        return subprocess.run(
            self.cmd(store, *extra),
            cwd=self.work,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            start_new_session=True,
        )

    def start(self, store: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.cmd(store, *extra),
            cwd=self.work,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def until(self, process: subprocess.Popen, text: str) -> str:
        seen = []
        for line in process.stdout:
            seen.append(line)
            if text in line:
                break
        return "".join(seen)

    def fresh(self, name: str) -> Path:
        store = self.work / name
        shutil.rmtree(store, ignore_errors=True)
        return store

    def done_store(self, name: str) -> Path:
        store = self.fresh(name)
        shutil.copytree(self.work / "reference", store)
        return store

    def verdict(self, name: str, store: Path, outcome: str, output: str = "") -> list:
        rows = Store(store).read().rows
        runs = {r["run_id"] for r in rows}
        resumed = next(
            (
                line.split("at step ")[1].split()[0]
                for line in output.splitlines()
                if "resumed from the checkpoint" in line
            ),
            "-",
        )
        same = bool(rows) and all(
            (r["mAP"], r["cmc"]) == (self.reference[r["rerank"]]["mAP"], self.reference[r["rerank"]]["cmc"])
            for r in rows
        )
        ok = len(rows) == 2 and len(runs) == 1 and same
        if not ok and output:  # what the run said, so a failed line can be read without rerunning it
            tail = "\n".join(output.splitlines()[-12:])
            print(f"--- {name}: FAIL; the run's last lines:\n{tail}", file=sys.stderr, flush=True)
        return [
            name,
            outcome,
            2,
            len(rows),
            "yes" if len(runs) == 1 and rows else "no",
            resumed,
            "yes" if same else "no",
            "PASS" if ok else "FAIL",
        ]

    # -- scenarios ------------------------------------------------------------------------------

    def uninterrupted(self):
        store = self.fresh("reference")
        result = self.run(store)
        assert result.returncode == 0, result.stdout + result.stderr
        self.reference = {r["rerank"]: r for r in Store(store).read().rows}
        return self.verdict("uninterrupted", store, f"rc {result.returncode}")

    def kill_launcher(self):
        store = self.fresh("kill-launcher")
        p = self.start(store)
        self.until(p, "checkpoint at step 2")
        os.kill(p.pid, signal.SIGKILL)  # the launcher only: its workers get SIGINT from the kernel
        p.wait()
        time.sleep(2)
        state = Store(store).read_state(self.cell.id) or {}
        again = self.run(store)
        return self.verdict(
            "kill -9 launcher",
            store,
            f"{state.get('state')} ({state.get('reason', '')[:40]}) -> rc {again.returncode}",
            again.stdout,
        )

    def kill_rank(self):
        store = self.fresh("kill-rank")
        p = self.start(store)
        self.until(p, "checkpoint at step 2")
        holder = __import__("harness.lease", fromlist=["read"]).read(Store(store).cell_dir(self.cell.id))
        os.kill(holder.pid, signal.SIGKILL)  # rank 0, which holds the lease
        p.communicate()
        again = self.run(store)
        return self.verdict("kill -9 rank 0", store, f"rc {p.returncode} -> rc {again.returncode}", again.stdout)

    def kill_row_write(self):
        store = self.fresh("kill-row-write")
        first = self.run(store, fault="row")
        tmp = list(store.rglob("*.tmp"))
        again = self.run(store)
        left = list(store.rglob("*.tmp"))
        return self.verdict(
            "kill mid-row-write",
            store,
            f"rc {first.returncode}, rows seen {len(Store(store).read().rows)} "
            f"-> rc {again.returncode}, .tmp {len(tmp)}->{len(left)}",
            again.stdout,
        )

    def kill_force(self):
        store = self.done_store("kill-force")
        before = Store(store).published_run(self.cell.id)
        first = self.run(store, "--force", fault="row")
        kept = Store(store).published_run(self.cell.id) == before
        again = self.run(store)
        return self.verdict(
            "kill mid --force",
            store,
            f"rc {first.returncode}, old set kept: {kept}, rerun: "
            f"{'nothing to run' if 'nothing to run' in again.stdout else 'ran'}",
            again.stdout,
        )

    def kill_checkpoint(self):
        store = self.fresh("kill-checkpoint")
        first = self.run(store, fault="checkpoint")
        again = self.run(store)
        return self.verdict(
            "kill mid-checkpoint", store, f"rc {first.returncode} -> rc {again.returncode}", again.stdout
        )

    def concurrent(self):
        store = self.fresh("concurrent")
        a = self.start(store)
        self.until(a, "checkpoint at step 2")
        b = self.run(store)
        out_a = a.communicate()[0]
        skipped = "skipped: held by" in b.stdout
        return self.verdict(
            "two runs at once", store, f"B rc {b.returncode}, skipped: {skipped}; A rc {a.returncode}", out_a
        )

    def damaged_row(self):
        store = self.done_store("damaged-row")
        s = Store(store)
        path = s.row_path(self.cell.id, "market1501", True, s.published_run(self.cell.id))
        path.write_bytes(path.read_bytes()[:100])
        status = subprocess.run(
            [sys.executable, "-m", "harness.cli", "status", str(self.spec), "--store", str(store)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
        )
        again = self.run(store)
        return self.verdict(
            "damaged row",
            store,
            f"status {'damaged' if 'damaged' in status.stdout else '?'} -> rc {again.returncode}",
            again.stdout,
        )

    def bad_checkpoint(self, malicious: bool):
        name = "malicious checkpoint" if malicious else "corrupt checkpoint"
        store = self.fresh(name.replace(" ", "-"))
        p = self.start(store)
        self.until(p, "checkpoint at step 4")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        path = Store(store).cell_dir(self.cell.id) / "checkpoint.pt"
        path.write_bytes(pickle.dumps({"step": Payload()}) if malicious else os.urandom(4096))
        again = self.run(store)
        ran = (self.work / "PWNED").exists()
        moved = len(list(path.parent.glob("checkpoint.pt.bad-*")))
        return self.verdict(
            name, store, f"rc {again.returncode}, moved aside {moved}, payload ran: {ran}", again.stdout + again.stderr
        )

    def disk_full(self):
        store = self.fresh("disk-full")
        store.mkdir()
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(store)], capture_output=True
        ).returncode:
            return ["disk full", "skipped: cannot mount a tmpfs here", 2, "-", "-", "-", "-", "SKIP"]
        try:
            result = self.run(store)
            warned = "no space left on" in result.stdout
            return self.verdict(
                "disk full (20 MiB tmpfs)",
                store,
                f"rc {result.returncode}, checkpoints skipped with a warning: {warned}",
                result.stdout + result.stderr,
            )
        finally:
            subprocess.run(["umount", "-l", str(store)], capture_output=True)

    def read_only(self):
        store = self.fresh("read-only")
        store.mkdir()
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(store)], capture_output=True
        ).returncode:
            return ["read-only store", "skipped: cannot mount a tmpfs here", 2, "-", "-", "-", "-", "SKIP"]
        try:
            shutil.copytree(self.work / "reference", store, dirs_exist_ok=True)
            subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
            done = self.run(store)
            fresh = self.run(store, "--force")
            outcome = f"done: rc {done.returncode}; --force: rc {fresh.returncode} {'(one-paragraph error)' if 'cannot be written' in fresh.stderr else fresh.stderr[-80:]}"
            row = self.verdict("read-only store", store, outcome)
            row[-1] = "PASS" if row[-1] == "PASS" and done.returncode == 0 and fresh.returncode == 2 else "FAIL"
            return row
        finally:
            subprocess.run(["umount", "-l", str(store)], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="a scratch folder (default: a new temporary one)")
    parser.add_argument("--only", nargs="+", help="scenario names to run (after the uninterrupted one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="reidbench-faults-"))
    suite = Suite(work.resolve())
    scenarios = {
        "kill_launcher": suite.kill_launcher,
        "kill_rank": suite.kill_rank,
        "kill_row_write": suite.kill_row_write,
        "kill_force": suite.kill_force,
        "kill_checkpoint": suite.kill_checkpoint,
        "concurrent": suite.concurrent,
        "damaged_row": suite.damaged_row,
        "corrupt_checkpoint": lambda: suite.bad_checkpoint(False),
        "malicious_checkpoint": lambda: suite.bad_checkpoint(True),
        "disk_full": suite.disk_full,
        "read_only": suite.read_only,
    }
    table = [suite.uninterrupted()]
    for name, scenario in scenarios.items():
        if args.only and name not in args.only:
            continue
        started = time.time()
        try:
            table.append(scenario())
        except Exception as err:  # noqa: BLE001 - a scenario that breaks is a failed line, not a stopped suite
            table.append([name, f"error: {type(err).__name__}: {err}"[:120], 2, "-", "-", "-", "-", "FAIL"])
        print(f"  {name}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    print(
        tabulate(
            table,
            headers=[
                "scenario",
                "outcome",
                "rows expected",
                "present",
                "from one run",
                "resumed step",
                "metrics = uninterrupted",
                "verdict",
            ],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    return 0 if all(r[-1] in ("PASS", "SKIP") for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
