"""Markdown, LaTeX and CSV for paper tables and plain tables. Each published column becomes three:
the paper's number, ours (mean over seeds, ± std (n=seeds) with several) and the difference."""

from __future__ import annotations

import csv
import io

from tabulate import tabulate

from harness.report.extras import SimpleTable, cell_text
from harness.report.tables import METRIC_NAMES, Block, Cell, PaperTable

SYN_NOTE = "syn = measured on synthetic data"


def measured_text(cell: Cell) -> str:
    """Ours: blank for a competitor's cell, '–' for a cell not measured yet."""
    if cell.identity is None:
        return ""
    return cell_text(cell.measure, cell.decimals)


def diff_text(cell: Cell) -> str:
    return "" if cell.diff is None else f"{cell.diff:+.{cell.decimals}f}"


def caption_lines(table: PaperTable) -> list[str]:
    lines = [table.summary(), *(note for note in (table.ap_note(), table.rerank_note()) if note)]
    lines.append(
        "Each column: the paper's number, ours (mean over seeds; ± sample std and n with several seeds), "
        "and ours minus the paper's. Blank: a method reidbench does not run; –: not measured yet."
    )
    return lines


# -- Markdown ------------------------------------------------------------------------------------


def _md_block(table: PaperTable, block: Block) -> str:
    headers = ["method"] + (["backbone"] if table.spec.show_backbone else [])
    for col in block.columns:
        headers += [f"{col.group} {METRIC_NAMES.get(col.metric, col.metric)}", "ours", "Δ"]
    body = []
    for row in block.rows:
        line = [row.label] + ([row.backbone] if table.spec.show_backbone else [])
        for cell in row.cells:
            published = cell.published or ""
            if cell.footnote:
                published += f" [{cell.footnote}]"
            line += [published, measured_text(cell), diff_text(cell)]
        body.append(line)
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def markdown_table(table: PaperTable) -> str:
    out = [f"## {table.spec.paper} Table {table.spec.number}: {table.spec.title}", ""]
    out += [" ".join(caption_lines(table)), ""]
    for block in table.blocks:
        if block.title:
            out += [f"**{block.title}**", ""]
        out += [_md_block(table, block), ""]
    for k, note in enumerate(table.footnotes, 1):
        out.append(f"[{k}] {note}  ")
    if table.footnotes:
        out.append("")
    return "\n".join(out)


def markdown_simple(table: SimpleTable, level: int = 2) -> str:
    out = [f"{'#' * level} {table.title}", "", " ".join(table.caption), ""]
    if table.rows:
        out += [tabulate(list(table.rows), headers=list(table.headers), tablefmt="github", disable_numparse=True), ""]
    return "\n".join(out)


# -- LaTeX ---------------------------------------------------------------------------------------

_LATEX_ESCAPES = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "→": r"$\rightarrow$",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "×": r"$\times$",
    "–": "--",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def _latex_measured(cell: Cell) -> str:
    text = measured_text(cell)
    if cell.measure is not None and cell.measure.synthetic:
        return latex_escape(text.removesuffix(" syn")) + r"\textsuperscript{syn}"
    return latex_escape(text)


def _latex_block(table: PaperTable, block: Block) -> list[str]:
    lead = 2 if table.spec.show_backbone else 1
    spec = "l" * lead + "rrr" * len(block.columns)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    groups: list[tuple[str, int]] = []
    for col in block.columns:
        if groups and groups[-1][0] == col.group:
            groups[-1] = (col.group, groups[-1][1] + 1)
        else:
            groups.append((col.group, 1))
    lines.append(
        " & " * (lead - 1)
        + " & "
        + " & ".join(rf"\multicolumn{{{3 * n}}}{{c}}{{{latex_escape(g)}}}" for g, n in groups)
        + r" \\"
    )
    lines.append(
        ("Method & Backbone" if lead == 2 else "Method")
        + " & "
        + " & ".join(
            rf"\multicolumn{{3}}{{c}}{{{latex_escape(METRIC_NAMES.get(c.metric, c.metric))}}}" for c in block.columns
        )
        + r" \\"
    )
    lines.append(" & " * (lead - 1) + " & " + " & ".join(["paper & ours & $\\Delta$"] * len(block.columns)) + r" \\")
    lines.append(r"\midrule")
    for row in block.rows:
        cells = [latex_escape(row.label)] + ([latex_escape(row.backbone)] if lead == 2 else [])
        for cell in row.cells:
            published = latex_escape(cell.published or "")
            if cell.footnote:
                published += rf"\textsuperscript{{[{cell.footnote}]}}"
            cells += [published, _latex_measured(cell), latex_escape(diff_text(cell))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def latex_table(table: PaperTable) -> str:
    spec = table.spec
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        r"\scriptsize",
        rf"\caption{{{latex_escape(f'{spec.paper} Table {spec.number}: {spec.title}. ' + ' '.join(caption_lines(table)))}}}",
    ]
    for block in table.blocks:
        if block.title:
            lines += [rf"\par\smallskip\textbf{{{latex_escape(block.title)}}}\par\smallskip"]
        lines += _latex_block(table, block)
    for k, note in enumerate(table.footnotes, 1):
        lines.append(rf"\par\smallskip\noindent\textsuperscript{{[{k}]}} {latex_escape(note)}")
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def latex_simple(table: SimpleTable) -> str:
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        r"\scriptsize",
        rf"\caption{{{latex_escape(table.title + '. ' + ' '.join(table.caption))}}}",
        rf"\begin{{tabular}}{{{'l' * len(table.headers)}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in table.headers) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


LATEX_PREAMBLE = "% Needs \\usepackage{booktabs}. Written by `reidbench report`; regenerate rather than edit.\n"


# -- CSV -----------------------------------------------------------------------------------------

CSV_HEADERS = (
    "paper",
    "table",
    "block",
    "row",
    "backbone",
    "column",
    "metric",
    "published",
    "footnote",
    "store_method",
    "store_variant",
    "store_backbone",
    "train_dataset",
    "test_dataset",
    "protocol",
    "rerank",
    "measured_mean",
    "measured_std",
    "seeds",
    "synthetic",
    "diff",
)


def csv_rows(table: PaperTable) -> list[list[str]]:
    out = []
    for block in table.blocks:
        for row in block.rows:
            for col, cell in zip(block.columns, row.cells):
                if cell.published is None:
                    continue
                i, m = cell.identity, cell.measure
                out.append(
                    [
                        table.spec.paper,
                        str(table.spec.number),
                        block.title or "",
                        row.label,
                        row.backbone,
                        col.group,
                        col.metric,
                        cell.published,
                        table.footnotes[cell.footnote - 1] if cell.footnote else "",
                        *(
                            (
                                i.method,
                                i.variant,
                                i.backbone,
                                i.train_dataset,
                                i.test_dataset,
                                i.protocol,
                                str(i.rerank).lower(),
                            )
                            if i
                            else [""] * 7
                        ),
                        *(
                            (
                                f"{m.mean:.4f}",
                                "" if m.std is None else f"{m.std:.4f}",
                                str(m.n),
                                str(m.synthetic).lower(),
                            )
                            if m
                            else [""] * 4
                        ),
                        "" if cell.diff is None else f"{cell.diff:.4f}",
                    ]
                )
    return out


def csv_text(tables: list[PaperTable]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADERS)
    for table in tables:
        writer.writerows(csv_rows(table))
    return buffer.getvalue()


def csv_simple(table: SimpleTable) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.headers)
    writer.writerows(table.rows)
    return buffer.getvalue()
