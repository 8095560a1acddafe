"""The result store at 1,000, 10,000 and 100,000 rows: write, compact, read, report and status.

    python benchmarks/store.py [--sizes 1000 10000 100000] [--status-cells 2000]

For each size, a store of synthetic rows in the real schema (harness.store.SCHEMA): the papers'
reference identities (method, variant, backbone, train and test dataset, protocol), each a cell with
up to two test sets, plain and re-ranked, over as many seeds as the size needs; each row carries a
~1 KB `config` like a real cell's. Timed in one run, each in-process after the imports:

  write     the real write path (Store.stage_row per row, Store.publish per cell: temporary file,
            fsync, rename), on the first 2,000 rows; the per-row rate is printed and the rest of the
            store is built with plain pyarrow writes (the same files, without fsync), to save time;
  read-loose  Store.read() of the row files before compaction (sizes up to 10,000: minutes beyond);
  compact   harness.compact.compact (`reidbench store compact`) of every published set;
  read      Store.read() after compaction;
  report    `reidbench report --store S --out DIR` (every paper, every format, the HTML's plots);
  report-md `reidbench report --format md` (every table, no HTML plots: the plots' cost grows with
            the number of models, not of rows);
  report1   `reidbench report --paper scsn` (one paper: only its methods' rows are read);
  floor     the same rows from one Parquet file with pyarrow: pq.read_table (columns), and
            pq.read_table(...).to_pylist() (the Python rows a report needs). Ratios are to the latter.

Then `reidbench status` and `reidbench run --dry-run` of a --status-cells grid (jobs/smoke.toml with
four backbones and as many seeds as needed) whose cells are all done, before and after compaction.

Targets (issue 19): report over 100,000 rows within 10 s and within 3x the floor; status of a
2,000-cell grid within 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import harness.report.build  # noqa: F401  (imported before the clock starts, as the other modules)
import harness.report.plots  # noqa: F401
import harness.runner  # noqa: F401
from harness.cli import main
from harness.compact import compact
from harness.report.mapping import identity
from harness.report.reference import reference_cells
from harness.spec import load_spec
from harness.status import expected_rows
from harness.store import PUBLISHED, SCHEMA, Store, row_name

REAL_WRITES = 2000
BACKBONES = ["resnet18", "resnet50", "resnet50m", "resnet152"]
SMOKE = Path(__file__).resolve().parent.parent / "jobs" / "smoke.toml"
CONFIG = json.dumps({"cell": {"train": {f"option_{i}": i * 1.5 for i in range(40)}, "note": "x" * 200}})


def timed(function) -> float:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        start = time.perf_counter()
        function()
        return time.perf_counter() - start


def synthetic_cells(n_rows: int) -> list[list[dict]]:
    """Cells of rows (up to two test sets x plain/re-ranked) over the reference identities and seeds."""
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for ref in reference_cells():
        found = identity(ref)
        if found is not None:
            tests = groups.setdefault((found.method, found.variant, found.backbone, found.train_dataset), [])
            if (found.test_dataset, found.protocol) not in tests:
                tests.append((found.test_dataset, found.protocol))
    keys = sorted(groups)
    cells, count, seed = [], 0, 0
    when = datetime(2026, 12, 1, tzinfo=timezone.utc)
    while count < n_rows:
        for method, variant, backbone, train in keys:
            if count >= n_rows:
                break
            cell_id = f"{len(cells):012x}"
            rows = []
            for test, protocol in groups[(method, variant, backbone, train)][:2]:
                for rerank in (False, True):
                    value = (hash((cell_id, test, rerank)) % 1000) / 1000
                    rows.append(
                        {
                            **{name: None for name in SCHEMA.names},
                            **dict(schema_version=2, grid="bench", cell_id=cell_id, method=method, variant=variant),
                            **dict(backbone=backbone, train_dataset=train, test_dataset=test, synthetic=False),
                            **dict(seed=seed, rerank=rerank, protocol=protocol, mAP=value, mAP_official=value),
                            **dict(mINP=value / 2, rank1=value, rank5=value, rank10=value, cmc=[value] * 50),
                            **dict(num_query=3368, num_gallery=15913, num_valid_queries=3368, iterations=18000),
                            **dict(train_seconds=3600.0, train_images_per_second=400.0, eval_seconds=30.0),
                            **dict(git_sha="0" * 40, git_dirty=False, reidbench_version="0.1", torch_version="2.5"),
                            **dict(hostname="node1", device="NVIDIA H100", world_size=1, executor="slurm"),
                            **dict(started_at=when, finished_at=when, config=CONFIG, run_id=f"run-{cell_id}"),
                            "rerank_distance": "squared-euclidean" if rerank else None,
                        }
                    )
            rows = rows[: n_rows - count]
            cells.append(rows)
            count += len(rows)
        seed += 1
    return cells


def write_fast(store: Store, rows: list[dict]) -> None:
    """The files Store.stage_row and Store.publish write, without their fsyncs (to build big stores)."""
    cell, run = rows[0]["cell_id"], rows[0]["run_id"]
    folder = store.root / "rows" / cell / run
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    for i, row in enumerate(rows):
        pq.write_table(table.slice(i, 1), folder / row_name(row["test_dataset"], row["rerank"]))
    names = sorted(row_name(r["test_dataset"], r["rerank"]) for r in rows)
    record = {"cell_id": cell, "run_id": run, "rows": names, "published_ns": time.time_ns()}
    (folder.parent / PUBLISHED).write_text(json.dumps(record))


def write_real(store: Store, rows: list[dict]) -> None:
    for row in rows:
        store.stage_row(row)
    store.publish(rows[0]["cell_id"], rows[0]["run_id"])


def bench_size(n: int, work: Path) -> None:
    store_root = work / f"store{n}"
    store = Store(store_root)
    cells = synthetic_cells(n)
    really, written, i = 0.0, 0, 0
    start = time.perf_counter()
    while i < len(cells) and written < REAL_WRITES:
        write_real(store, cells[i])
        written, i = written + len(cells[i]), i + 1
    really = time.perf_counter() - start
    for rows in cells[i:]:
        write_fast(store, rows)
    rows = [r for c in cells for r in c]
    floor_file = work / f"floor{n}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), floor_file)
    del rows
    floor_table = timed(lambda: pq.read_table(floor_file))
    floor = timed(lambda: pq.read_table(floor_file).to_pylist())
    loose = timed(lambda: Store(store_root).read()) if n <= 10_000 else None
    compacting = timed(lambda: compact(Store(store_root)))
    found: list = []
    read = timed(lambda: found.append(Store(store_root).read()))
    assert len(found[0].rows) == n and not found[0].problems, (len(found[0].rows), found[0].problems[:3])
    report = timed(lambda: main(["report", "--store", str(store_root), "--out", str(work / f"report{n}")]))
    tables = timed(
        lambda: main(["report", "--store", str(store_root), "--format", "md", "--out", str(work / f"md{n}")])
    )
    one = timed(lambda: main(["report", "--store", str(store_root), "--paper", "scsn", "--out", str(work / f"bot{n}")]))
    per_row = really / written * 1000
    print(f"\n{n} rows ({len(cells)} cells):")
    print(f"  write, real path  {really:8.2f} s for {written} rows: {per_row:.1f} ms/row")
    print(f"  floor read_table  {floor_table:8.2f} s")
    print(f"  floor +to_pylist  {floor:8.2f} s   (the ratios' reference)")
    if loose is not None:
        print(f"  read, row files   {loose:8.2f} s   {loose / floor:6.1f}x floor")
    else:
        print("  read, row files   (not measured above 10,000 rows)")
    print(f"  compact           {compacting:8.2f} s")
    print(f"  read, compacted   {read:8.2f} s   {read / floor:6.1f}x floor")
    print(f"  report (all)      {report:8.2f} s   {report / floor:6.1f}x floor   (target at 100,000: <= 10 s, <= 3x)")
    print(f"  report --format md{tables:8.2f} s   {tables / floor:6.1f}x floor   (the tables alone: no plots)")
    print(f"  report --paper scsn{one:8.2f} s   {one / floor:6.1f}x floor")


def grid_spec(cells: int) -> str:
    seeds = -(-cells // len(BACKBONES))
    text = SMOKE.read_text()
    text = re.sub(r"^name = .*$", f'name = "status{cells}"', text, count=1, flags=re.M)
    text = re.sub(r"^backbones = .*$", f"backbones = {BACKBONES}".replace("'", '"'), text, count=1, flags=re.M)
    return re.sub(r"^seeds = .*$", f"seeds = {list(range(seeds))}", text, count=1, flags=re.M)


def bench_status(n: int, work: Path) -> None:
    spec_path = work / "status.toml"
    spec_path.write_text(grid_spec(n))
    spec = load_spec(spec_path)
    root = work / "status-store"
    store = Store(root)
    template = synthetic_cells(2)[0][0]
    for cell in spec.cells:
        rows = [
            {**template, "cell_id": cell.id, "run_id": f"run-{cell.id}", "test_dataset": test, "rerank": rerank}
            for test, rerank in expected_rows(cell)
        ]
        write_fast(store, rows)
    status = ["status", str(spec_path), "--store", str(root)]
    dry = ["run", str(spec_path), "--store", str(root), "--dry-run"]
    loose, loose_dry = timed(lambda: main(status)), timed(lambda: main(dry))
    compact(Store(root))
    packed, packed_dry = timed(lambda: main(status)), timed(lambda: main(dry))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        main(status)
    assert f"{len(spec.cells)} of {len(spec.cells)}" in out.getvalue() or "done" in out.getvalue(), out.getvalue()[
        -500:
    ]
    print(f"\nreidbench status, {len(spec.cells)}-cell grid, every cell done ({len(spec.cells) * 2} rows):")
    print(f"  row files        status {loose:6.2f} s   run --dry-run {loose_dry:6.2f} s")
    print(f"  compacted        status {packed:6.2f} s   run --dry-run {packed_dry:6.2f} s   (target: status <= 5 s)")


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--status-cells", type=int, default=2000)
    args = parser.parse_args()
    print(f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPU(s)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        for n in args.sizes:
            bench_size(n, Path(folder))
        if args.status_cells:
            bench_status(args.status_cells, Path(folder))
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other users' processes included)")
    sys.stdout.flush()


if __name__ == "__main__":
    main_benchmark()
