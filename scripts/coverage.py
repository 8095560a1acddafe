"""Which published numbers a spec's cells can regenerate, per paper and table.

    python scripts/coverage.py [SPEC ...] [--missing]     (default: jobs/full.toml)

For every reference cell (harness/report/reference/paper_results.csv): is it measurable (the CSV
names a store identity) and does a cell or `[[combine]]` combination of the specs write a row under
that identity? A cell's rows are identified as the report identifies them (harness/report/tables.py
index_rows: each test set, plain and re-ranked, fine-tuning and unions and splits as the report
reads them). SPReID Table 1 (LIP parsing) is written by `reidbench parsing eval`, not by a spec:
it is counted apart. `--missing` lists the measurable numbers no spec cell writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.data import protocol  # noqa: E402
from harness.report.mapping import Identity, identity, row_train_dataset  # noqa: E402
from harness.report.reference import reference_cells  # noqa: E402
from harness.spec import load_spec  # noqa: E402
from harness.splits import unsplit  # noqa: E402


def written(spec_paths: list[Path]) -> set[Identity]:
    """Every identity a row of the specs' cells and combinations is looked up under."""
    out: set[Identity] = set()
    for path in spec_paths:
        spec = load_spec(path)
        for source, config in [(c, {"cell": {"finetune_dataset": c.finetune_dataset}}) for c in spec.cells] + [
            (m, {"parts": [{"finetune_dataset": p.finetune_dataset} for p in m.parts]}) for m in spec.combinations
        ]:
            for test in source.test_datasets:
                row = {"train_dataset": source.train_dataset, "test_dataset": test, "config": json.dumps(config)}
                for rerank in (False, True):
                    out.add(
                        Identity(
                            source.method,
                            source.variant,
                            source.backbone,
                            unsplit(row_train_dataset(row)),
                            unsplit(test),
                            protocol(test),
                            rerank,
                        )
                    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="*", type=Path, default=[ROOT / "jobs" / "full.toml"])
    parser.add_argument("--missing", action="store_true", help="list the measurable numbers no spec cell writes")
    args = parser.parse_args()
    have = written(args.specs)
    counts: Counter = Counter()
    missing = []
    for ref in reference_cells():
        key = (ref.paper, ref.table)
        counts[key, "published"] += 1
        found = identity(ref)
        if found is None:
            continue
        counts[key, "measurable"] += 1
        if found.method == "spreid-parsing":
            counts[key, "parsing eval"] += 1
        elif found in have:
            counts[key, "spec"] += 1
        else:
            missing.append((ref, found))
    tables = sorted({k for k, _ in counts})
    print(f"{'paper':<10}{'table':>6}{'published':>11}{'measurable':>12}{'by the specs':>14}{'parsing eval':>14}")
    for key in tables:
        print(
            f"{key[0]:<10}{key[1]:>6}{counts[key, 'published']:>11}{counts[key, 'measurable']:>12}"
            f"{counts[key, 'spec']:>14}{counts[key, 'parsing eval']:>14}"
        )
    total = {what: sum(counts[k, what] for k in tables) for what in ("published", "measurable", "spec", "parsing eval")}
    print(
        f"{'all':<10}{'':>6}{total['published']:>11}{total['measurable']:>12}{total['spec']:>14}{total['parsing eval']:>14}"
    )
    if args.missing:
        for ref, found in missing:
            print(f"missing: {ref.paper} T{ref.table} {ref.method} {ref.metric} -> {found}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
