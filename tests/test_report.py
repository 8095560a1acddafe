"""Paper tables from a store built through the real store API: placement of every published number,
measured cells (seeds, synthetic data, re-ranking), golden Markdown, determinism and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from harness.cli import main
from harness.report import plots
from harness.report.build import write_report
from harness.report.mapping import identity
from harness.report.reference import CSV_COLUMNS, METRICS, PAPERS, TABLES, parse_cells, parse_papers, reference_cells
from harness.report.render import markdown_table
from harness.report.tables import build_table
from harness.store import PROFILE_SCHEMA, SCHEMA, Store

GOLDEN = Path(__file__).parent / "golden"
_WHEN = datetime(2026, 1, 1, tzinfo=timezone.utc)


def result_row(
    method="ssp-reid",
    variant="backbone",  # SSP-ReID Table 3 "backbone only"
    backbone="resnet50",
    train="market1501",
    test=None,
    seed=0,
    rerank=False,
    synthetic=True,
    protocol="market",
    rank1=0.5,
    mAP=0.3,
    **extra,
):
    row = {name: None for name in SCHEMA.names}
    test = test or train
    row.update(
        schema_version=1,
        grid="g",
        cell_id=f"{method}-{variant}-{backbone}-{train}-{seed}-{int(synthetic)}",
        method=method,
        variant=variant,
        backbone=backbone,
        train_dataset=train,
        test_dataset=test,
        synthetic=synthetic,
        seed=seed,
        rerank=rerank,
        protocol=protocol,
        mAP=mAP,
        mINP=0.1,
        rank1=rank1,
        rank5=min(1.0, rank1 + 0.1),
        rank10=min(1.0, rank1 + 0.15),
        cmc=[min(1.0, rank1 + 0.01 * k) for k in range(60)],
        num_query=10,
        num_gallery=100,
        num_valid_queries=10,
        iterations=5,
        train_seconds=1.0,
        train_images_per_second=30.0,
        eval_seconds=0.5,
        world_size=1,
        executor="local",
        started_at=_WHEN,
        finished_at=_WHEN,
        config="{}",
    )
    row.update(extra)
    return row


def profile_row(profile_id, method="ssp-reid", variant="ssp", backbone="resnet50", gpu=True, **extra):
    row = {name: None for name in PROFILE_SCHEMA.names}
    row.update(
        schema_version=1,
        profile_id=profile_id,
        source="profile",
        method=method,
        variant=variant,
        backbone=backbone,
        input_height=256,
        input_width=128,
        batch_size=64,
        world_size=2 if gpu else 1,
        precision="bf16" if gpu else "fp32",
        options="{}",
        train_steps=50,
        warmup_steps=10,
        train_images_per_second=1200.0 if gpu else 20.0,
        train_images_per_second_per_device=600.0 if gpu else 20.0,
        infer_images_per_second=5000.0 if gpu else 80.0,
        device="cuda" if gpu else "cpu",
        executor="local",
        started_at=_WHEN,
        finished_at=_WHEN,
        config="{}",
    )
    if gpu:
        row.update(
            gpu_model="NVIDIA H100 80GB HBM3",
            gpu_count=2,
            peak_memory_bytes=12 * 2**30,
            sm_utilization=87.5,
            memory_utilization=40.0,
            power_watts=512.0,
            per_gpu="[]",
        )
    else:
        row.update(gpu_note="no NVIDIA GPU")
    row.update(extra)
    return row


def store_with(tmp_path, rows, profiles=()) -> Path:
    store = Store(tmp_path / "store")
    for r in rows:
        store.write_row(r)
    for p in profiles:
        store.write_profile(p)
    return store.root


def spec(paper, number):
    return next(t for t in TABLES if t.paper == paper and t.number == number)


def cell_of(table, label, group, metric):
    for block in table.blocks:
        for row in block.rows:
            if row.label == label:
                for col, cell in zip(block.columns, row.cells):
                    if col.group == group and col.metric == metric:
                        return cell
    raise AssertionError(f"no cell {label} / {group} / {metric}")


# -- every published number, in its place --------------------------------------------------------


@pytest.mark.parametrize("table_spec", TABLES, ids=lambda t: f"{t.paper}-{t.number}")
def test_every_reference_number_appears_in_its_table(table_spec):
    refs = [c for c in reference_cells() if c.paper == table_spec.paper and c.table == table_spec.number]
    table = build_table(table_spec, [])
    shown = Counter(cell.published for b in table.blocks for r in b.rows for cell in r.cells if cell.published)
    assert shown == Counter(c.value for c in refs) and table.published == len(refs)
    text = markdown_table(table)
    for ref in refs:
        assert f" {ref.value} " in text or f" {ref.value} [" in text, ref


def test_the_reference_data_covers_the_five_papers_tables():
    # the 1,170 numbers of the papers' tables, and DSA-reID's CUHK01 result without pre-training,
    # which only its text gives (88.6 / 97.1, kept in Table 2 as its own row)
    assert len(reference_cells()) == 1172
    assert sum(c.table == 2 and c.variant == "no CUHK03 pre-training (text)" for c in reference_cells()) == 2
    assert {(t.paper, t.number) for t in TABLES} == {(c.paper, c.table) for c in reference_cells()}
    assert len(TABLES) == 2 + 6 + 4 + 6 + 4


def test_reference_data_ships_in_the_package():
    import tomllib
    from fnmatch import fnmatch
    from importlib import resources

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "harness.report"
    ]
    data = resources.files("harness.report") / "reference"
    for name in ("paper_results.csv", "caveats.md", "papers.toml"):
        assert (data / name).is_file() and any(fnmatch(f"reference/{name}", p) for p in patterns)


def test_reference_rows_map_to_store_identities():
    by_key = {
        (c.paper, c.table, c.method, c.variant, c.test_dataset, c.protocol, c.rerank, c.metric): c
        for c in reference_cells()
    }
    ssp = identity(
        by_key[
            "ssp-reid",
            4,
            "ResNet-M + SSP-ReID + RR",
            "SSP-ReID (full framework: S-ReID + SP-ReID)",
            "cuhk03",
            "cuhk03-detected",
            True,
            "mAP",
        ]
    )
    assert (ssp.method, ssp.variant, ssp.backbone, ssp.test_dataset, ssp.protocol, ssp.rerank) == (
        "ssp-reid",
        "ssp",
        "resnet50m",
        "cuhk03-detected",
        "market",
        True,
    )
    base = identity(by_key["ssp-reid", 3, "ResNet", "backbone only", "market1501", "", False, "rank1"])
    assert (base.method, base.variant) == ("ssp-reid", "backbone")  # the plain backbone, not the BNNeck baseline
    gasm = identity(
        by_key[
            "gasm",
            1,
            "GASM",
            "FCN + pose layer + mask layer, guided adaptive spatial matching",
            "crowdreid",
            "",
            False,
            "rank1",
        ]
    )
    assert (gasm.train_dataset, gasm.test_dataset) in {
        ("market1501", "crowd-reid"),
        ("dukemtmc", "crowd-reid"),
        ("msmt17", "crowd-reid"),
    }
    spreid = identity(by_key["spreid", 2, "Model-L", "input 492x164", "cuhk03", "cuhk03-labeled", False, "rank1"])
    assert (spreid.test_dataset, spreid.protocol) == ("cuhk03-labeled-classic", "cuhk03-classic")
    competitor = by_key["ssp-reid", 4, "HA-CNN", "", "market1501", "", False, "mAP"]
    assert identity(competitor) is None


def test_the_papers_and_their_layouts_are_data():
    assert PAPERS == ("ssp-reid", "spreid", "dsa-reid", "scsn", "gasm")  # papers.toml's order, the reports' order
    assert set(METRICS) <= set(SCHEMA.names)  # a published number stands beside a store column
    uncertain = [c for c in reference_cells() if c.uncertain]
    assert len(uncertain) == 63 and all(c.note for c in uncertain)


# A paper that is not one of the five: two rows of the CSV and one table layout, no code.
_TOY_LAYOUT = """
[toy]
title = "Toy: a paper added as data"

[[toy.tables]]
number = 1
title = "The toy table"
metric_order = ["mAP", "rank1"]
"""
_TOY_ROWS = [
    "toy,1,Ours,,ResNet50,market1501,market1501,,false,rank1,91.0,false,baseline,bnneck,resnet50,market1501,market1501,market,",
    (
        "toy,1,Ours,,ResNet50,market1501,market1501,,false,mAP,80.0,true,baseline,bnneck,resnet50,market1501,market1501,market,"
        "printed twice with different values"
    ),
    "toy,1,Rival,,ResNet50,market1501,market1501,,false,rank1,88.0,false,,,,,,,",
]


def _toy_csv(*rows: str) -> str:
    return ",".join(CSV_COLUMNS) + "\n" + "\n".join(rows) + "\n"


def test_a_new_papers_table_is_csv_rows_and_a_layout(tmp_path):
    titles, (layout,) = parse_papers(_TOY_LAYOUT)
    assert titles == {"toy": "Toy: a paper added as data"} and layout.metric_order == ("mAP", "rank1")
    cells = parse_cells(_toy_csv(*_TOY_ROWS))
    rows = (
        Store(store_with(tmp_path, [result_row("baseline", "bnneck", rank1=0.9, mAP=0.75, synthetic=False)]))
        .read()
        .rows
    )
    table = build_table(layout, rows, reference=cells)
    assert cell_of(table, "Ours", "Market-1501", "rank1").measure.mean == pytest.approx(90.0)
    assert cell_of(table, "Ours", "Market-1501", "mAP").footnote == 1 and table.footnotes == (
        "printed twice with different values",
    )
    assert cell_of(table, "Rival", "Market-1501", "rank1").identity is None
    assert (table.published, table.measurable, table.measured) == (3, 2, 2)


@pytest.mark.parametrize(
    "row,expected",
    [
        (
            _TOY_ROWS[0].replace(",false,baseline", ",maybe,baseline"),
            "line 2: uncertain must be true or false, not 'maybe'",
        ),
        (_TOY_ROWS[0].replace(",resnet50,", ",,"), "line 2: fill every one of store_method"),
        (_TOY_ROWS[0].replace(",rank1,", ",mean_iou,"), "line 2: metric 'mean_iou' is not a store column"),
    ],
)
def test_reference_rows_that_do_not_hold_together_are_refused_with_their_line(row, expected):
    with pytest.raises(ValueError, match=expected):
        parse_cells(_toy_csv(row))


@pytest.mark.parametrize(
    "change,expected",
    [
        (("metric_order", "metrics"), r"\[\[toy.tables\]\] number = 1: unknown key 'metrics'"),
        (('metric_order = ["mAP", "rank1"]', 'block_by = "seed"'), "block_by must be test_dataset or train_dataset"),
        (('title = "Toy', 'name = "Toy'), r"\[toy\]: a paper has a title"),
    ],
)
def test_table_layouts_that_do_not_hold_together_are_refused(change, expected):
    with pytest.raises(ValueError, match=expected):
        parse_papers(_TOY_LAYOUT.replace(*change))


def test_the_report_command_names_the_papers_of_the_data(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"--paper PAPER {', '.join(PAPERS)} or all (default)" in help_text


# -- measured cells ------------------------------------------------------------------------------


def test_seeds_are_averaged_with_std_and_count(tmp_path):
    rows = [result_row(seed=s, rank1=r1, synthetic=False) for s, r1 in ((0, 0.80), (1, 0.82), (2, 0.84))]
    table = build_table(spec("ssp-reid", 3), Store(store_with(tmp_path, rows)).read().rows)
    cell = cell_of(table, "ResNet", "Market-1501", "rank1")
    assert cell.measure.n == 3 and cell.measure.mean == pytest.approx(82.0) and cell.measure.std == pytest.approx(2.0)
    assert cell.diff == pytest.approx(82.0 - 88.1)
    line = next(line for line in markdown_table(table).splitlines() if line.startswith("| ResNet "))
    assert "82.0 ± 2.0 (n=3)" in line and "-6.1" in line and " syn" not in line
    assert table.measured == 2 and "2 of 160 measurable cells measured" in markdown_table(table)


def test_synthetic_measurements_are_marked_and_captioned(tmp_path):
    rows = [result_row(rank1=0.25, synthetic=True)]
    table = build_table(spec("ssp-reid", 3), Store(store_with(tmp_path, rows)).read().rows)
    assert cell_of(table, "ResNet", "Market-1501", "rank1").measure.synthetic
    text = markdown_table(table)
    assert "25.0 syn" in text and "SYNTHETIC" in text


def test_a_store_mixing_real_and_synthetic_shows_the_real_ones(tmp_path):
    rows = [result_row(rank1=0.25, synthetic=True), result_row(rank1=0.875, synthetic=False)]
    table = build_table(spec("ssp-reid", 3), Store(store_with(tmp_path, rows)).read().rows)
    cell = cell_of(table, "ResNet", "Market-1501", "rank1")
    assert cell.measure.mean == pytest.approx(87.5) and not cell.measure.synthetic
    text = markdown_table(table)
    assert "87.5" in text and "25.0" not in text and "SYNTHETIC" not in text
    assert table.hidden_synthetic == 2 and "the real ones are shown" in text


def test_rerank_rows_come_from_the_stores_reranked_rows(tmp_path):
    rows = [
        result_row("ssp-reid", "ssp", rank1=0.70, synthetic=False),
        result_row("ssp-reid", "ssp", rank1=0.90, rerank=True, synthetic=False),
    ]
    table = build_table(spec("ssp-reid", 4), Store(store_with(tmp_path, rows)).read().rows)
    assert cell_of(table, "ResNet + SSP-ReID", "Market-1501", "rank1").measure.mean == pytest.approx(70.0)
    assert cell_of(table, "ResNet + SSP-ReID + RR", "Market-1501", "rank1").measure.mean == pytest.approx(90.0)
    # SPReID prints its re-ranked rows as "+re-ranking" under the model they re-rank
    spreid = build_table(spec("spreid", 6), [])
    assert "Inception-V3 ft* +re-ranking" in [r.label for r in spreid.blocks[0].rows]


def test_each_paper_compares_the_ap_its_evaluation_computed_and_says_which(tmp_path, monkeypatch):
    import harness.report.mapping as mapping

    rows = [
        result_row(mAP=0.40, mAP_official=0.39, synthetic=False),
        result_row(
            "ssp-reid",
            "ssp",
            mAP=0.60,
            mAP_official=0.58,
            rerank=True,
            synthetic=False,
            rerank_distance="squared-euclidean",
        ),
    ]
    stored = Store(store_with(tmp_path, rows)).read().rows
    table = build_table(spec("ssp-reid", 4), stored)
    assert cell_of(table, "ResNet + SSP-ReID + RR", "Market-1501", "mAP").measure.mean == pytest.approx(60.0)
    text = markdown_table(table)
    assert "mAP, published and ours, is the mean of the precision at each true match" in text and "(eqs. 5-6)" in text
    assert "on squared Euclidean distances (as torchreid hands them to the reference code)" in text
    # a paper whose evaluation used the official code's AP would be measured with mAP_official
    monkeypatch.setitem(mapping.PAPER_AP, "ssp-reid", ("mAP_official", "its code runs compute_AP.m"))
    official = build_table(spec("ssp-reid", 4), stored)
    assert cell_of(official, "ResNet + SSP-ReID + RR", "Market-1501", "mAP").measure.mean == pytest.approx(58.0)
    assert cell_of(official, "ResNet + SSP-ReID + RR", "Market-1501", "rank1").measure.mean == pytest.approx(50.0)
    assert "is the official Market-1501 code's AP (compute_AP.m" in markdown_table(official)
    assert "mAP, published" not in markdown_table(build_table(spec("spreid", 1), stored))  # LIP: no mAP column


def test_competitor_rows_show_the_published_value_alone(tmp_path):
    table = build_table(spec("ssp-reid", 4), Store(store_with(tmp_path, [result_row(synthetic=False)])).read().rows)
    line = next(line for line in markdown_table(table).splitlines() if line.startswith("| HA-CNN "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == ["75.7", "", ""]


def test_uncertain_cells_carry_a_footnote():
    text = markdown_table(build_table(spec("dsa-reid", 2), []))
    pse = next(line for line in text.splitlines() if line.startswith("| PSE "))
    assert "67.7 [" in pse and "86.6 [" in pse
    assert "CAUTION" in text.split("| DSA-reID (pretrained on CUHK03)")[-1]


def test_no_rows_renders_published_values_and_says_so(tmp_path):
    text = markdown_table(build_table(spec("gasm", 3), []))
    assert "No measurements in the store for this table: published values only" in text
    assert "31.8" in text or "GASM" in text


# -- golden Markdown, one table per paper --------------------------------------------------------


def _golden_store(tmp_path) -> list[dict]:
    rows = [
        # SSP-ReID Table 4: the full framework on ResNet-50, plain and re-ranked, two seeds
        *(
            result_row("ssp-reid", "ssp", seed=s, rank1=0.70 + 0.02 * s, mAP=0.40 + 0.01 * s, synthetic=False)
            for s in (0, 1)
        ),
        result_row(
            "ssp-reid", "ssp", rank1=0.75, mAP=0.55, rerank=True, synthetic=False, rerank_distance="squared-euclidean"
        ),
        # SPReID Table 5 (CUHK03 labeled, classic protocol)
        result_row(
            "spreid", "wfg", "inception_v3", "cuhk03-labeled-classic", protocol="cuhk03-classic", rank1=0.881, mAP=0.7
        ),
        # DSA-reID Table 5, synthetic data
        result_row("dsa-reid", "full", rank1=0.912, mAP=0.801),
        # SCSN Table 6, three seeds
        *(result_row("scsn", "stages-3", train="dukemtmc", seed=s, rank1=0.9 - 0.01 * s, mAP=0.78) for s in (0, 1, 2)),
        # GASM Table 3, cross-domain
        result_row("gasm", "full", train="market1501", test="dukemtmc", rank1=0.561, mAP=0.349, synthetic=False),
    ]
    return Store(store_with(tmp_path, rows)).read().rows


@pytest.mark.parametrize("paper,number", [("ssp-reid", 4), ("spreid", 5), ("dsa-reid", 5), ("scsn", 6), ("gasm", 3)])
def test_golden_markdown(tmp_path, paper, number):
    text = markdown_table(build_table(spec(paper, number), _golden_store(tmp_path)))
    golden = GOLDEN / f"{paper}-table{number}.md"
    if os.environ.get("REIDBENCH_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


# -- the whole report: determinism, extras, bad input --------------------------------------------


def _full_store(tmp_path) -> Path:
    rows = [result_row(seed=s, rank1=0.8 + 0.01 * s, synthetic=False) for s in (0, 1)]
    rows += [
        result_row("gasm", "full", train="market1501", test=t, rank1=0.4, synthetic=True)
        for t in ("market1501", "dukemtmc", "crowd-reid")
    ]
    return store_with(tmp_path, rows, [profile_row("p-gpu"), profile_row("p-cpu", gpu=False)])


def test_report_is_deterministic_to_the_byte(tmp_path):
    root = _full_store(tmp_path)
    first, second = tmp_path / "a", tmp_path / "b"
    write_report(root, first)
    write_report(root, second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert Path("html/img/cmc-market1501.svg") in files and Path("html/img/throughput.svg") in files
    assert Path("html/index.html") in files and Path("gasm.tex") in files and Path("scsn.csv") in files
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_report_has_throughput_cross_domain_and_pictures(tmp_path):
    out = tmp_path / "out"
    write_report(_full_store(tmp_path), out)
    throughput = (out / "throughput.md").read_text()
    assert "2 × NVIDIA H100 80GB HBM3" in throughput and "1200.0" in throughput and "600.0" in throughput
    assert "12.00" in throughput and "87.5" in throughput and "| CPU " in throughput
    cross = (out / "cross-domain.md").read_text()
    assert "gasm:full on resnet50: train × test" in cross and "Crowd-REID" in cross and "40.0 syn / 30.0 syn" in cross
    index = (out / "html" / "index.html").read_text()
    assert 'src="img/throughput.svg"' in index and 'href="gasm.html"' in index
    gasm = (out / "html" / "gasm.html").read_text()
    assert 'src="img/gasm-cmc-crowd-reid.svg"' in gasm and (out / "html" / "img" / "gasm-cmc-crowd-reid.svg").is_file()
    assert (out / "html" / "img" / "gasm-cmc-crowd-reid.svg").read_bytes().startswith(b"<svg ")


_SVG = "{http://www.w3.org/2000/svg}"


def _lines(path: Path) -> tuple[ElementTree.Element, dict[str, list[float]]]:
    """The picture's axes box, and each line's label and points as flat [x1, y1, x2, y2, ...] lists."""
    root = ElementTree.parse(path).getroot()
    lines: dict[str, list[float]] = {}
    for line in root.iter(f"{_SVG}polyline"):
        points = [float(v) for point in line.get("points").split() for v in point.split(",")]
        lines.setdefault(line.find(f"{_SVG}title").text, []).extend(points)
    return root, lines


def test_a_cmc_picture_draws_each_models_curve_through_its_points(tmp_path):
    curves = {
        "b:model resnet50": [40.0 + k for k in range(50)],
        "a:model resnet50 [syn]": [100.0 * k / 49 for k in range(50)],
    }
    first = plots.cmc_plot(tmp_path / "one" / "cmc.svg", "market1501", curves)
    second = plots.cmc_plot(tmp_path / "two" / "cmc.svg", "market1501", dict(reversed(curves.items())))
    assert first.read_bytes() == second.read_bytes()  # the same curves, the same bytes, in any order
    root, lines = _lines(first)
    assert sorted(lines) == sorted(curves)
    box = root.find(f"{_SVG}rect[@class='axes']")
    left, top, width, height = (float(box.get(k)) for k in ("x", "y", "width", "height"))
    for label, values in curves.items():  # rank 1 on the left edge, 50 on the right; 0 % at the bottom, 100 % on top
        expected = [c for k, v in enumerate(values) for c in (left + k / 49 * width, top + (100 - v) / 100 * height)]
        assert lines[label] == pytest.approx(expected, abs=0.006), label
    colours = [line.get("stroke") for line in root.iter(f"{_SVG}polyline")]
    assert colours == ["#1f77b4", "#d62728"]  # matplotlib's first colours, in the labels' order
    texts = [t.text for t in root.iter(f"{_SVG}text")]
    assert {"CMC on Market-1501", "rank", "matching rate (%)", "1", "50", "100", *curves} <= set(texts)


def test_a_training_curve_breaks_where_a_value_is_missing(tmp_path):
    records = [{"step": s, "id": 2.0 - s / 10, "lr": 0.001, "phase": 0} for s in range(10)]
    records[4]["id"] = float("nan")
    root, lines = _lines(plots.curve_plot(tmp_path / "curve.svg", "cell x", records))
    assert len(lines["id"]) == 2 * 9 and len(lines["loss"]) == 2 * 9 and len(lines["lr"]) == 2 * 10
    assert len([line for line in root.iter(f"{_SVG}polyline") if line.find(f"{_SVG}title").text == "id"]) == 2
    assert len(set(lines["lr"][1::2])) == 1  # a constant learning rate: a level line, inside its axes
    assert {"cell x", "step", "loss", "learning rate"} <= {t.text for t in root.iter(f"{_SVG}text")}


def test_report_command_with_no_rows_writes_published_tables(tmp_path, capsys):
    assert main(["report", "--store", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 0
    assert "published values only" in capsys.readouterr().out
    assert "| ResNet + SSP-ReID + RR " in (tmp_path / "out" / "ssp-reid.md").read_text()


def test_report_one_table_in_one_format(tmp_path, capsys):
    root = _full_store(tmp_path)
    assert (
        main(
            [
                "report",
                "--store",
                str(root),
                "--paper",
                "ssp-reid",
                "--table",
                "3",
                "--format",
                "latex",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert "| ResNet " in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ssp-reid-table3.tex"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--paper", "sspreid"], "did you mean 'ssp-reid'"),
        (["--paper", "gasm", "--table", "7"], "Valid tables of gasm: 1, 2, 3, 4."),
        (["--table", "3"], "needs --paper"),
        (["--format", "pdf"], "Valid names: csv, html, latex, md."),
    ],
)
def test_bad_paper_table_or_format_lists_the_valid_ones(tmp_path, capsys, args, expected):
    assert main(["report", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_rows_of_an_unknown_schema_version_are_refused_with_the_file_named(tmp_path, capsys):
    root = store_with(tmp_path, [result_row(synthetic=False)])
    future = result_row(cell_id="future", schema_version=99)
    bad = root / "rows" / "future" / "market1501.plain.parquet"
    bad.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([future], schema=SCHEMA), bad)
    assert main(["report", "--store", str(root), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert str(bad) in err and "schema version [99]" in err
    index = (tmp_path / "out" / "index.md").read_text()
    assert "rows/future/market1501.plain.parquet: schema version [99]" in index


# -- what a browser shows -------------------------------------------------------------------------

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot-report.sh"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_paper_page_renders_in_headless_chromium(tmp_path):
    out = tmp_path / "out"
    write_report(store_with(tmp_path, [result_row(rank1=0.8, synthetic=False), result_row(rank1=0.3)]), out)
    shot = tmp_path / "ssp-reid.png"
    subprocess.run([str(SCRIPT), str(out / "html" / "ssp-reid.html"), str(shot), "1200x900"], check=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 900)
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20  # text, table borders and the tinted cells, not a blank page
    # the table's header background (#f0f0f0) is on screen
    assert any(c == (240, 240, 240) for _, c in (colours or []))


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"cell": {"finetune_dataset": None, "seed": 1}},
        {"cell": {"finetune_dataset": "dukemtmc"}},
        {"cell": {"finetune_dataset": "cuhk01"}},
        {"cell": {"finetune_dataset": "dukemtmc"}, "train": {"finetune_dataset": None}},
        {"cell": {"finetune_dataset": "dukemtmc"}, "note": '"finetune_dataset": null'},
        {"parts": [{"finetune_dataset": None}]},
        {"parts": [{"finetune_dataset": "dukemtmc"}, {"finetune_dataset": "dukemtmc"}]},
        {"parts": [{"finetune_dataset": None}, {"finetune_dataset": "dukemtmc"}]},
        {"cell": {"finetune_dataset": "cuhk03-labeled-classic-split4"}},
    ],
)
@pytest.mark.parametrize("separators", [None, (",", ":")])
def test_a_rows_training_set_and_split_follow_its_configs_finetune_target(config, separators):
    from harness.report.mapping import finetune_target, row_split, row_train_dataset
    from harness.splits import split_in

    row = {"train_dataset": "market1501", "test_dataset": "dukemtmc"}
    row["config"] = json.dumps(config, sort_keys=True, separators=separators)
    target = finetune_target(config)  # what the parsed config says, however the text reads
    expected = "market1501" if target is None else target if target == "dukemtmc" else f"market1501>{target}"
    assert row_train_dataset(row) == expected
    assert row_split(row) == split_in("market1501", "dukemtmc", target)  # 4 for a model tuned on split 4


def test_union_trained_rows_count_as_trained_on_their_test_member():
    from harness.report.mapping import Identity
    from harness.report.tables import index_rows

    union = "market1501+dukemtmc+cuhk03-labeled-classic+cuhk01"

    def row(test, target=None):
        return {
            "method": "spreid",
            "variant": "wfg-ft",
            "backbone": "inception_v3",
            "train_dataset": union,
            "test_dataset": test,
            "protocol": "market",
            "rerank": False,
            "config": json.dumps({"cell": {"finetune_dataset": target}}),
        }

    index = index_rows(
        [row("market1501"), row("msmt17"), row("market1501", "market1501"), row("dukemtmc", "market1501")]
    )
    key = lambda train, test: Identity("spreid", "wfg-ft", "inception_v3", train, test, "market", False)  # noqa: E731
    assert len(index[key("market1501", "market1501")]) == 2  # the union cell's and the fine-tuned target's row
    assert len(index[key(union, "msmt17")]) == 1  # not a member: cross-domain
    # a member, but the cell was fine-tuned on another target: a model no table lists
    assert len(index[key(f"{union}>market1501", "dukemtmc")]) == 1 and not index[key("dukemtmc", "dukemtmc")]
