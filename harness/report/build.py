"""`reidbench report`: read the store once and write every requested table, in every requested format."""

from __future__ import annotations

import gc
import os
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError, closest
from harness.report import extras, html, plots, render, results_table
from harness.report.reference import PAPER_TITLES, PAPERS, table_specs
from harness.report.tables import PaperTable, build_table, index_rows, paper_methods
from harness.store import Store

FORMATS = ("md", "latex", "html", "csv")
_EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv"}


@dataclass
class ReportOutcome:
    tables: list[PaperTable] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # store files that were skipped, and why (full paths)
    notes: list[str] = field(default_factory=list)  # the same, paths relative to the store, for the report's pages
    store: Path = Path("results")


def check_selection(paper: str, table: int | None) -> list[str]:
    """The papers to render; a UserError naming the valid choices for an unknown paper or table."""
    if paper != "all" and paper not in PAPERS:
        raise UserError(f"--paper {paper!r} is not one of the papers; {closest(paper, [*PAPERS, 'all'])}")
    if table is not None:
        if paper == "all":
            raise UserError(f"--table {table} needs --paper: table numbers are per paper ({', '.join(PAPERS)}).")
        numbers = [s.number for s in table_specs(paper)]
        if table not in numbers:
            raise UserError(
                f"--table {table}: {paper} has no such results table. "
                f"Valid tables of {paper}: {', '.join(map(str, numbers))}."
            )
    return list(PAPERS) if paper == "all" else [paper]


@contextmanager
def _without_cycle_collection():
    """Python's cyclic garbage collector paused: the report makes no reference cycles, but each full
    collection walks every row read, and a report over 100,000 rows ran a dozen (a fifth of its time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_without_cycle_collection()
def write_report(
    store_root: Path, out: Path, *, paper: str = "all", table: int | None = None, formats: tuple[str, ...] = FORMATS
) -> ReportOutcome:
    """Render the selected tables from the store into `out`; the same store gives the same bytes."""
    papers = check_selection(paper, table)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"--format {unknown[0]!r} is not a format; {closest(unknown[0], FORMATS)}")
    store = Store(store_root)
    # One paper's report reads only its methods' rows (the filter reaches the segments' Parquet
    # reader); the overview pages of `--paper all` show every row.
    methods = None if paper == "all" else {m for p in papers for m, _, _ in paper_methods(p)}
    contents = store.read(methods=methods)
    outcome = ReportOutcome(
        problems=contents.problems, notes=[_relative(p, store.root) for p in contents.problems], store=store.root
    )
    rows, profiles = contents.rows, contents.profiles
    index = index_rows([*rows, *contents.parsing])  # once for every table; SPReID Table 1 reads the parsing rows
    per_paper = {
        p: [build_table(s, rows, index=index) for s in table_specs(p) if table is None or s.number == table]
        for p in papers
    }
    outcome.tables = [t for tables in per_paper.values() for t in tables]
    for t in outcome.tables:  # seeds measured on different copies of a dataset: refused, and said so
        refused = [f"{t.name}: {note}" for note in t.footnotes if note.startswith("not averaged")]
        outcome.problems += refused
        outcome.notes += refused
    write = _writer(out, outcome.files)
    suffix = f"-table{table}" if table is not None else ""
    by_model = defaultdict(list)  # each paper's CMC curves: its models' rows
    for r in rows if "html" in formats else ():
        by_model[r["method"], r["variant"], r["backbone"]].append(r)

    for p, tables in per_paper.items():
        head = f"# {PAPER_TITLES[p]}\n\nRegenerated from the result store by `reidbench report`; do not edit.\n\n"
        if "md" in formats:
            write(f"{p}{suffix}.md", head + "\n".join(render.markdown_table(t) for t in tables))
        if "latex" in formats:
            write(f"{p}{suffix}.tex", render.LATEX_PREAMBLE + "\n".join(render.latex_table(t) for t in tables))
        if "csv" in formats:
            write(f"{p}{suffix}.csv", render.csv_text(tables))
        if "html" in formats:
            curves = extras.cmc_curves(r for model in sorted(paper_methods(p)) for r in by_model.get(model, ()))
            images = [_cmc_image(out, f"{p}-cmc-{test}.svg", test, c, outcome.files) for test, c in curves.items()]
            write(f"html/{p}{suffix}.html", html.paper_page(p, tables, images))
    if table is None and paper == "all":
        _write_overview(out, formats, rows, profiles, outcome, write)
    return outcome


def _write_overview(out: Path, formats, rows, profiles, outcome: ReportOutcome, write) -> None:
    """The pages across papers: throughput, cross-domain matrices, all CMC curves, and the index."""
    throughput = extras.throughput_table(profiles)
    cross = extras.cross_domain_tables(rows)
    cross_intro = (
        "# Cross-domain results of every method\n\nRegenerated from the result store by `reidbench report`.\n\n"
    )
    if not cross:
        cross_intro += "The store holds no result rows yet.\n"
    if "md" in formats:
        write("throughput.md", "# Throughput\n\n" + render.markdown_simple(throughput))
        write("cross-domain.md", cross_intro + "\n".join(render.markdown_simple(t) for t in cross))
        write("index.md", _index_markdown(outcome))
        if rows:
            write(
                "results.md",
                "# Results\n\nEvery row of the store; metrics in percent; R1/R5/R10 are CMC ranks, "
                "RR re-ranked; rows marked `synthetic` were measured on generated data.\n\n"
                + results_table(rows)
                + "\n",
            )
    if "latex" in formats:
        write("throughput.tex", render.LATEX_PREAMBLE + render.latex_simple(throughput))
        write("cross-domain.tex", render.LATEX_PREAMBLE + "\n".join(render.latex_simple(t) for t in cross))
    if "csv" in formats:
        write("throughput.csv", render.csv_simple(throughput))
    if "html" in formats:
        bars = plots.throughput_plot(out / "html" / "img" / "throughput.svg", throughput)
        if bars:
            outcome.files.append(bars)
        curves = extras.cmc_curves(rows)
        images = [_cmc_image(out, f"cmc-{test}.svg", test, c, outcome.files) for test, c in curves.items()]
        summaries = {}
        for t in outcome.tables:
            summaries.setdefault(t.spec.paper, []).append(t)
        store = Store(outcome.store)
        names = {
            r[
                "cell_id"
            ]: f"{r['method']}:{r['variant']} on {r['backbone']}, trained on {r['train_dataset']}, seed {r['seed']}"
            for r in rows
        }
        curves = []
        for cell_id in store.cells_with_metrics():
            records = store.read_metrics(cell_id)
            if records:
                title = f"cell {cell_id}: {names.get(cell_id, 'no rows yet')}"
                outcome.files.append(plots.curve_plot(out / "html" / "img" / f"curve-{cell_id}.svg", title, records))
                curves.append((title, f"img/curve-{cell_id}.svg"))
        ranked = [
            (
                f"cell {cell_id} ({names.get(cell_id, '')}) on {test}",
                Path(os.path.relpath(page, out / "html")).as_posix(),
            )
            for cell_id, test, page in store.visrank_pages()
        ]
        write(
            "html/index.html",
            html.index_page(
                summaries,
                throughput,
                "img/throughput.svg" if bars else None,
                cross,
                images,
                outcome.notes,
                curves=curves,
                ranked=ranked,
            ),
        )


def _index_markdown(outcome: ReportOutcome) -> str:
    lines = [
        "# reidbench report",
        "",
        "Regenerated from the result store by `reidbench report`; do not edit.",
        "",
        "| paper | table | measured | measurable | published | synthetic |",
        "|---|---|---|---|---|---|",
    ]
    for t in outcome.tables:
        lines.append(
            f"| [{t.spec.paper}]({t.spec.paper}.md) | {t.spec.number} | {t.measured} | {t.measurable} | "
            f"{t.published} | {t.synthetic} |"
        )
    if outcome.notes:
        lines += ["", "Files of the store that were skipped:", ""] + [f"- {p}" for p in outcome.notes]
    return "\n".join(lines) + "\n"


def _cmc_image(out: Path, name: str, test: str, curves, files: list[Path]) -> str:
    files.append(plots.cmc_plot(out / "html" / "img" / name, test, curves))
    return f"img/{name}"


def _writer(out: Path, files: list[Path]):
    def write(name: str, text: str) -> None:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        files.append(path)

    return write


def _relative(problem: str, root: Path) -> str:
    """A store note with the store's own folder left out, so reports do not depend on where it lives."""
    return problem.replace(f"{root}{os.sep}", "")
