"""Fine-tuned rows reach the published cells of their fine-tuning target, and only those.

The stores are written with the rows the harness itself writes (harness.engine.rows) for the cells
and combinations of the repository's own specs, so the test follows the real row layout: SPReID's
Table 6 combinations made once per fine-tuning target (jobs/spreid-table6.toml), and DSA-reID's
CUHK01 cell, pre-trained on CUHK03 and fine-tuned on CUHK01 (jobs/dsa-reid-cuhk01.toml).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.engine.rows import METRIC_COLUMNS, combination_row, result_row
from harness.engine.train import TrainResult
from harness.report.reference import TABLES
from harness.report.tables import build_table
from harness.spec import Resources, load_spec
from harness.store import Store

JOBS = Path(__file__).resolve().parent.parent / "jobs"
CPU = torch.device("cpu")
# Each fine-tuning target's models score their own number everywhere, so a cell that averages
# several targets' models, or takes another target's, shows a number none of these is.
SCORE = {"market1501": 0.61, "dukemtmc": 0.47, "cuhk03-labeled-classic": 0.83, "cuhk01": 0.904}


def metrics(value: float) -> dict:
    out = {k: value for k in METRIC_COLUMNS if k not in ("num_valid_queries", "rerank_distance")}
    return {**out, "num_valid_queries": 10, "rerank_distance": "euclidean", "cmc": np.full(50, value)}


def table(paper: str, number: int, store: Store):
    spec = next(t for t in TABLES if t.paper == paper and t.number == number)
    return build_table(spec, store.read().rows)


def measured(t):
    return [c for b in t.blocks for r in b.rows for c in r.cells if c.measure is not None]


def test_spreid_table6_star_cells_each_show_their_own_targets_combination(tmp_path):
    spec = load_spec(JOBS / "spreid-table6.toml")
    store = Store(tmp_path / "store")
    targets = {c.parts[0].finetune_dataset for c in spec.combinations}
    assert targets == {"market1501", "dukemtmc", "cuhk03-labeled-classic"}  # all three targets in one store
    for combo in spec.combinations:
        value = SCORE[combo.parts[0].finetune_dataset]
        run = f"combine-{combo.id}"
        for test in combo.test_datasets:
            for rerank in (False, True):
                row = combination_row(
                    combo,
                    test_dataset=test,
                    protocol="cuhk03-classic" if "classic" in test else "market",
                    metrics=metrics(value),
                    rerank=rerank,
                    num_query=10,
                    num_gallery=100,
                    part_rows=[{"iterations": 1, "train_seconds": 1.0, "git_sha": "x", "finished_at": "now"}]
                    * len(combo.parts),
                    eval_seconds=0.1,
                    device=CPU,
                    started=None,
                    code=("x", False),
                    run_id=run,
                )
                store.stage_row(row)
        store.publish(combo.id, run)
    cells = measured(table("spreid", 6, store))
    # every "*" and "*"+re-ranking cell of SPReID's Table 6 (44) and "SPReID combined-ft" (11)
    assert len(cells) == 44 + 11
    for cell in cells:
        assert cell.measure.n == 1
        assert cell.measure.mean == pytest.approx(100 * SCORE[cell.identity.test_dataset])


def test_dsa_reid_cuhk01_row_reaches_table2_after_cuhk03_pretraining(tmp_path):
    spec = load_spec(JOBS / "dsa-reid-cuhk01.toml")
    (cell,) = spec.cells
    assert (cell.train_dataset, cell.finetune_dataset) == ("cuhk03-labeled", "cuhk01")
    store = Store(tmp_path / "store")
    trained = TrainResult(iterations=1, seconds=1.0, images_per_second=1.0, losses={})
    for test, value in (("cuhk01", 0.904), ("cuhk03-labeled", 0.2)):
        store.stage_row(
            result_row(
                cell,
                Resources(),
                test_dataset=test,
                protocol="cuhk01" if test == "cuhk01" else "market",
                synthetic=False,
                metrics=metrics(value),
                rerank=False,
                num_query=10,
                num_gallery=100,
                result=trained,
                eval_seconds=0.1,
                device=CPU,
                world_size=1,
                executor="local",
                started=None,
                run_id="run-1",
                hosts=["localhost"],
            )
        )
    store.publish(cell.id, "run-1")
    t = table("dsa-reid", 2, store)
    cells = measured(t)
    # the CUHK01 column's R1 and R5 of "DSA-reID" (published 90.4 / 97.8), from the CUHK01 row only;
    # the fine-tuned model's CUHK03 number is no published cell (the paper's CUHK03 column is trained there)
    assert sorted(c.published for c in cells) == ["90.4", "97.8"]
    assert all(c.measure.mean == pytest.approx(90.4) and c.identity.test_dataset == "cuhk01" for c in cells)
