"""DSA-reID, SCSN and GASM specs train as long as their papers (and the toolkits they credit) do.

Steps per cell on Market-1501 follow from the published training-set size (harness/data/published.py)
and each spec's epoch_unit; the figures are the ones the specs' headers quote.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.data.published import PUBLISHED
from harness.data.sampler import epoch_steps
from harness.engine import schedule
from harness.report.reference import reference_cells
from harness.spec import load_spec

JOBS = Path(__file__).resolve().parents[1] / "jobs"
MARKET = PUBLISHED["market1501"]


def market_plan(spec_name: str, method: str):
    spec = load_spec(JOBS / spec_name)
    cell = next(c for c in spec.cells if f"{c.method}:{c.variant}" == method and c.train_dataset == "market1501")
    t = cell.train
    per_epoch = epoch_steps(
        t.epoch_unit,
        num_images=MARKET["train_images"],
        num_ids=MARKET["train_ids"],
        ids_per_batch=t.ids_per_batch,
        images_per_id=t.images_per_id,
    )
    return t, schedule.plan(t, per_epoch)


@pytest.mark.parametrize(
    "spec_name, method, unit, steps",
    [
        # FastReID: len(dataset) // IMS_PER_BATCH = 12,936 // 64 = 202 steps, x 120 epochs
        ("gasm.toml", "gasm:full", "images", 24_240),
        # Bag of Tricks' RandomIdentitySampler: about every image once, 12,936 // 192 = 67, x 220
        ("scsn-market.toml", "scsn:stages-4", "images", 14_740),
        # MGN's P x K sampler: 751 identities // 16 = 46, x 320
        ("dsa-reid.toml", "dsa-reid:full", "identities", 14_720),
    ],
)
def test_steps_per_cell_on_market(spec_name, method, unit, steps):
    train, plans = market_plan(spec_name, method)
    assert train.epoch_unit == unit
    assert sum(p.steps for p in plans) == steps


def test_gasm_warms_up_and_augments_as_fastreid_bag_of_tricks():
    """Base-bagtricks.yml of 2020-07-06 (fast-reid fec7abc): WARMUP_ITERS 10 epochs from lr x 0.01,
    linear; flip 0.5, pad 10 + crop, random erasing 0.5 (the spec's header names each key's source)."""
    train, (plan,) = market_plan("gasm.toml", "gasm:full")
    assert (train.warmup, train.warmup_factor) == (10, 0.01)
    assert (train.flip, train.padding, train.random_erasing, train.weight_decay) == (0.5, 10, 0.5, 5e-4)
    lr = lambda step: train.lr * schedule.lr_lambda(train, (plan,))(step)  # noqa: E731
    assert lr(0) == pytest.approx(1e-6)
    assert lr(10 * 202) == pytest.approx(1e-4)
    assert lr(40 * 202) == pytest.approx(1e-5)
    assert lr(90 * 202) == pytest.approx(1e-6)


def test_scsn_table1_four_stage_rank1_is_flagged_as_the_misprint_it_is():
    """92.40 beside mAP 88.30, where the text claims "the same rank1 result as Pyramid" (95.70)."""
    (cell,) = [
        c
        for c in reference_cells()
        if (c.paper, c.table, c.method, c.metric, c.test_dataset)
        == ("scsn", 1, "SCSN(4 stages)", "rank1", "market1501")
    ]
    assert cell.value == "92.40" and cell.uncertain and "misprint" in cell.note


def test_scsn_models_named_twice_train_once_and_fill_both_tables():
    """Table 6's B is Table 5's B&A + SFE*2, and B+N(14,24,34) is SCSN(B&A+SFE*2+NMFF): one cell each."""
    cells = {(c.variant, c.train_dataset) for c in load_spec(JOBS / "scsn-ablation.toml").cells}
    assert not {v for v, _ in cells} & {"no-fusion", "nmff-14-24-34"}  # no second training of a network
    refs = [c for c in reference_cells() if c.paper == "scsn" and c.table in (5, 6) and c.store_method]
    assert {(c.store_variant, c.store_train_dataset) for c in refs} <= cells  # every row has its cell
    by_method = {(c.table, c.method): c.store_variant for c in refs}
    assert by_method[(6, "B")] == by_method[(5, "B&A + SFE*2")] == "sfe-2"
    assert by_method[(6, "B+N(14,24,34)")] == by_method[(5, "SCSN(B&A+SFE*2+NMFF)")] == "stages-3"
