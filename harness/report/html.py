"""The HTML report: an index page and one page per paper, plain files that open without a server
(pictures are SVG files in img/ beside them, linked relatively)."""

from __future__ import annotations

from html import escape

from harness.report.extras import SimpleTable
from harness.report.reference import PAPER_TITLES, PAPERS
from harness.report.render import caption_lines, diff_text, measured_text
from harness.report.tables import METRIC_NAMES, Block, Cell, PaperTable

_CSS = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 1.5em; color: #222; max-width: 100%; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 5px; white-space: nowrap; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pub { background: #fafafa; }
td.syn { background: #fff3cd; }
td.pos { color: #1a7f37; } td.neg { color: #b42318; }
.caption { font-size: 13px; max-width: 70em; }
.foot { font-size: 11px; color: #555; max-width: 80em; }
.scroll { overflow-x: auto; }
img { max-width: 48%; margin: 0.3em; border: 1px solid #ddd; }
img.curve { max-width: 80%; }
"""


def page(title: str, body: list[str]) -> str:
    nav = ['<nav><a href="index.html">index</a>'] + [f'<a href="{p}.html">{p}</a>' for p in PAPERS] + ["</nav>"]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            *nav,
            f"<h1>{escape(title)}</h1>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _cell_html(cell: Cell) -> list[str]:
    published = escape(cell.published or "")
    if cell.footnote:
        published += f'<sup><a href="#fn-{cell.footnote}">[{cell.footnote}]</a></sup>'
    measured = escape(measured_text(cell))
    synthetic = cell.measure is not None and cell.measure.synthetic
    if synthetic:
        measured = measured.removesuffix(" syn") + "<sup>syn</sup>"
    diff = cell.diff
    sign = "" if diff is None or synthetic else (" pos" if diff >= 0 else " neg")
    kind = " syn" if synthetic else ""
    return [
        f'<td class="num pub">{published}</td>',
        f'<td class="num{kind}">{measured}</td>',
        f'<td class="num{kind}{sign}">{escape(diff_text(cell))}</td>',
    ]


def _block_html(table: PaperTable, block: Block, anchor: str) -> list[str]:
    lead = 2 if table.spec.show_backbone else 1
    groups: list[tuple[str, int]] = []
    for col in block.columns:
        if groups and groups[-1][0] == col.group:
            groups[-1] = (col.group, groups[-1][1] + 1)
        else:
            groups.append((col.group, 1))
    lead_heads = '<th rowspan="3">method</th>' + ('<th rowspan="3">backbone</th>' if lead == 2 else "")
    out = [
        '<div class="scroll">',
        f'<table id="{anchor}">',
        "<thead>",
        "<tr>" + lead_heads + "".join(f'<th colspan="{3 * n}">{escape(g)}</th>' for g, n in groups) + "</tr>",
        "<tr>"
        + "".join(f'<th colspan="3">{escape(METRIC_NAMES.get(c.metric, c.metric))}</th>' for c in block.columns)
        + "</tr>",
        "<tr>" + "<th>paper</th><th>ours</th><th>Δ</th>" * len(block.columns) + "</tr>",
        "</thead>",
        "<tbody>",
    ]
    for row in block.rows:
        cells = [f"<td>{escape(row.label)}</td>"] + ([f"<td>{escape(row.backbone)}</td>"] if lead == 2 else [])
        for cell in row.cells:
            cells += _cell_html(cell)
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>", "</div>"]
    return out


def paper_table_html(table: PaperTable) -> list[str]:
    spec = table.spec
    anchor = f"table-{spec.number}"
    out = [
        f'<h2 id="{anchor}-title">Table {spec.number}: {escape(spec.title)}</h2>',
        *(f'<p class="caption">{escape(line)}</p>' for line in caption_lines(table)),
    ]
    for k, block in enumerate(table.blocks):
        if block.title:
            out.append(f"<h3>{escape(block.title)}</h3>")
        out += _block_html(table, block, f"{anchor}-{k}")
    if table.footnotes:
        out.append('<ol class="foot">')
        out += [f'<li id="fn-{k}" value="{k}">{escape(note)}</li>' for k, note in enumerate(table.footnotes, 1)]
        out.append("</ol>")
    return out


def simple_table_html(table: SimpleTable, level: int = 2) -> list[str]:
    out = [
        f"<h{level}>{escape(table.title)}</h{level}>",
        *(f'<p class="caption">{escape(c)}</p>' for c in table.caption),
    ]
    if table.rows:
        out += [
            '<div class="scroll">',
            "<table>",
            "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in table.headers) + "</tr>",
        ]
        for row in table.rows:
            first, *rest = row
            out.append(
                f"<tr><td>{escape(first)}</td>" + "".join(f'<td class="num">{escape(c)}</td>' for c in rest) + "</tr>"
            )
        out += ["</table>", "</div>"]
    return out


def images_html(paths: list[str], alt: str) -> list[str]:
    return [f'<img src="{escape(p)}" alt="{escape(alt)}: {escape(p)}">' for p in paths]


def paper_page(paper: str, tables: list[PaperTable], cmc_images: list[str]) -> str:
    body = [
        f"<p>{escape(PAPER_TITLES[paper])}.</p>",
        "<p>"
        + " · ".join(
            f'<a href="#table-{t.spec.number}-title">Table {t.spec.number}</a> ({t.measured}/{t.measurable} measured)'
            for t in tables
        )
        + "</p>",
    ]
    for table in tables:
        body += paper_table_html(table)
    body.append("<h2>CMC curves of this paper's methods</h2>")
    body += images_html(cmc_images, "CMC") if cmc_images else ["<p>No measured rows with CMC curves yet.</p>"]
    return page(f"{paper}: the paper's tables, published and measured", body)


def index_page(
    summaries: dict[str, list[PaperTable]],
    throughput: SimpleTable,
    throughput_image: str | None,
    cross: list[SimpleTable],
    cmc_images: list[str],
    notes: list[str],
    *,
    curves: list[tuple[str, str]] = (),
    ranked: list[tuple[str, str]] = (),
) -> str:
    body = [
        "<p>Every results table of the five papers with reidbench's measurements beside the published "
        "numbers, regenerated from the result store by <code>reidbench report</code>.</p>",
        "<h2>Papers</h2>",
        "<ul>",
    ]
    for paper, tables in summaries.items():
        parts = ", ".join(f"Table {t.spec.number}: {t.measured}/{t.measurable}" for t in tables)
        body.append(f'<li><a href="{paper}.html">{escape(PAPER_TITLES[paper])}</a> (measured cells: {parts})</li>')
    body.append("</ul>")
    if notes:
        body += ["<h2>Store notes</h2>", "<ul>", *(f"<li>{escape(n)}</li>" for n in notes), "</ul>"]
    body += simple_table_html(throughput)
    if throughput_image:
        body += images_html([throughput_image], "throughput")
    body.append("<h2>Cross-domain: every method, train × test</h2>")
    body += [line for t in cross for line in simple_table_html(t, level=3)] or ["<p>No measured rows yet.</p>"]
    body.append("<h2>CMC curves</h2>")
    body += images_html(cmc_images, "CMC") if cmc_images else ["<p>No measured rows with CMC curves yet.</p>"]
    body.append("<h2>Ranked lists</h2>")
    if ranked:
        body += [
            "<p>Pages written by <code>reidbench visrank</code>, in the store: each query with its top "
            "gallery images, plain and re-ranked, worst queries first.</p>",
            "<ul>",
        ]
        body += [f'<li><a href="{escape(href)}">{escape(label)}</a></li>' for label, href in ranked] + ["</ul>"]
    else:
        body.append("<p>None yet: <code>reidbench visrank CELL --test NAME</code> writes them.</p>")
    body.append("<h2>Training curves</h2>")
    if curves:
        body.append(
            "<p>Each cell's loss terms and learning rate per logged step (<code>cells/&lt;id&gt;/metrics.jsonl</code>).</p>"
        )
        body += [
            f'<figure><img class="curve" src="{escape(src)}" alt="training curve, {escape(title)}"></figure>'
            for title, src in curves
        ]
    else:
        body.append("<p>No cell has written a training curve yet.</p>")
    return page("reidbench report", body)
