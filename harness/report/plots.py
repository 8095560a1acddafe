"""CMC curves, throughput bars and training curves as small hand-written SVG files.

The same data gives the same bytes (no timestamp, no version, coordinates rounded to 0.01 px), and a
picture takes about a millisecond: matplotlib took 0.2 s a PNG, and the 30 CMC plots of a report
over 100,000 rows were a third of its time. Legends sit below the axes, one entry a line, so a plot
of many models stays readable; the picture grows with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from harness.report.extras import SimpleTable
from harness.report.tables import dataset_label

COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_FONT = "DejaVu Sans, Arial, sans-serif"
_TEXT, _SMALL, _TITLE = 12, 10, 13  # font sizes in px: matplotlib's 9 and 7 pt at 100 dpi, and a title
_LINE = 14  # px per legend entry
_CHAR = 0.6  # a character's mean width in DejaVu Sans, in em: enough to size the margins


def cmc_plot(path: Path, test_dataset: str, curves: dict[str, list[float]]) -> Path:
    """One line per model: matching rate (%) at ranks 1..50 on one test dataset."""
    svg = _Svg()
    axes = _Axes(left=60, top=30, width=560, height=300, x0=1, x1=50, y0=0, y1=100)
    svg.title(axes.left + axes.width / 2, 20, f"CMC on {dataset_label(test_dataset)}")
    svg.frame(axes, [1, 10, 20, 30, 40, 50], [0, 20, 40, 60, 80, 100], "rank", "matching rate (%)")
    entries = []
    for k, (label, values) in enumerate(sorted(curves.items())):
        colour = COLOURS[k % len(COLOURS)]
        svg.series(axes, range(1, len(values) + 1), values, colour, 1.5, label)
        entries.append((label, colour))
    bottom = svg.legend(axes.left, axes.top + axes.height + 50, entries)
    return svg.write(path, 640, bottom)


def throughput_plot(path: Path, table: SimpleTable) -> Path | None:
    """Horizontal bars of training and inference images per second, one pair per profile row."""
    head = table.headers
    labels, train, infer = [], [], []
    for row in table.rows:
        cells = dict(zip(head, row))
        labels.append(
            (
                f"{cells['method']} {cells['backbone']}",
                f"{cells['device']}, ws {cells['world size']}, {cells['precision']}",
            )
        )
        train.append(_value(cells["train img/s"]))
        infer.append(_value(cells["infer img/s"]))
    if not labels:
        return None
    left = 20 + max(_width(t, _SMALL) for pair in labels for t in pair)
    x_ticks = _ticks(0.0, max(train + infer) or 1.0)
    band = 55  # px per profile row
    axes = _Axes(left, 30, 620 - left, band * len(labels), x_ticks[0], x_ticks[-1], 0, len(labels))
    svg = _Svg()
    svg.title(left + axes.width / 2, 20, "Throughput per method and backbone")
    svg.frame(axes, x_ticks, [], "images per second", "", grid_y=False)
    for k, (lines, a, b) in enumerate(zip(labels, train, infer)):
        middle = axes.y(len(labels) - k - 0.5)  # the first row at the top
        for value, offset, colour in ((a, -10, COLOURS[0]), (b, 10, COLOURS[1])):
            svg.rect(axes.x(0), middle + offset - 10, axes.x(value) - axes.x(0), 20, colour)
        svg.text(left - 6, middle - 3, lines[0], _SMALL, anchor="end")
        svg.text(left - 6, middle + 9, lines[1], _SMALL, anchor="end")
    entries = [("training img/s (all devices)", COLOURS[0]), ("inference img/s", COLOURS[1])]
    bottom = svg.legend(left, axes.top + axes.height + 50, entries)
    return svg.write(path, 640, bottom)


_NOT_LOSSES = ("step", "lr", "phase", "images_per_second")  # the other keys of a metrics.jsonl line are loss terms


def curve_plot(path: Path, title: str, records: list[dict]) -> Path:
    """A cell's training curve: each loss term and the total (left), the learning rate (right), per step."""
    steps = [r["step"] for r in records]
    terms = sorted({k for r in records for k in r if k not in _NOT_LOSSES})
    losses = [("loss", [sum(r.get(k, 0.0) for k in terms) for r in records])]
    losses += [(key, [r.get(key) for r in records]) for key in terms]
    rates = [r.get("lr") for r in records]
    x_ticks = _ticks(*_span(steps))
    svg = _Svg()
    svg.title(400, 18, title)
    loss_ticks = _ticks(*_span(v for _, values in losses for v in values))
    left = _Axes(70, 32, 300, 190, x_ticks[0], x_ticks[-1], loss_ticks[0], loss_ticks[-1])
    svg.frame(left, x_ticks, loss_ticks, "step", "loss")
    entries = []
    for k, (label, values) in enumerate(losses):
        colour = COLOURS[k % len(COLOURS)]
        svg.series(left, steps, values, colour, 1.2, label)
        entries.append((label, colour))
    rate_ticks = _ticks(*_span(rates))
    right = _Axes(480, 32, 300, 190, x_ticks[0], x_ticks[-1], rate_ticks[0], rate_ticks[-1])
    svg.frame(right, x_ticks, rate_ticks, "step", "learning rate")
    svg.series(right, steps, rates, "#2ca02c", 1.2, "lr")
    bottom = svg.legend(left.left, left.top + left.height + 50, entries)
    return svg.write(path, 800, max(bottom, 280))


# -- drawing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Axes:
    """A plot's box in pixels (SVG's y grows downwards) and the data limits it shows."""

    left: float
    top: float
    width: float
    height: float
    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * self.width

    def y(self, value: float) -> float:
        return self.top + (self.y1 - value) / (self.y1 - self.y0) * self.height


class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(
        self, x: float, y: float, text: str, size: int = _TEXT, anchor: str = "middle", rotate: bool = False
    ) -> None:
        turn = f' transform="rotate(-90 {_n(x)} {_n(y)})"' if rotate else ""
        self.parts.append(
            f'<text x="{_n(x)}" y="{_n(y)}" font-size="{size}" text-anchor="{anchor}"{turn}>{escape(text)}</text>'
        )

    def title(self, x: float, y: float, text: str) -> None:
        self.text(x, y, text, _TITLE)

    def line(self, x1: float, y1: float, x2: float, y2: float, style: str) -> None:
        self.parts.append(f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" {style}/>')

    def rect(self, x: float, y: float, width: float, height: float, colour: str) -> None:
        self.parts.append(f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(width)}" height="{_n(height)}" fill="{colour}"/>')

    def frame(
        self, axes: _Axes, x_ticks: Sequence[float], y_ticks: Sequence[float], xlabel: str, ylabel: str, grid_y=True
    ) -> None:
        """Grid, box, ticks with their labels, and the axis labels."""
        grid = 'stroke="#b0b0b0" stroke-opacity="0.3" stroke-width="0.8"'
        tick = 'stroke="#000" stroke-width="0.8"'
        bottom, right = axes.top + axes.height, axes.left + axes.width
        x_step = x_ticks[-1] - x_ticks[-2] if len(x_ticks) > 1 else 1
        for value in x_ticks:
            x = axes.x(value)
            self.line(x, axes.top, x, bottom, grid)
            self.line(x, bottom, x, bottom + 4, tick)
            self.text(x, bottom + 16, _label(value, x_step), _SMALL)
        y_step = y_ticks[-1] - y_ticks[-2] if len(y_ticks) > 1 else 1
        for value in y_ticks:
            y = axes.y(value)
            if grid_y:
                self.line(axes.left, y, right, y, grid)
            self.line(axes.left - 4, y, axes.left, y, tick)
            self.text(axes.left - 6, y + 3.5, _label(value, y_step), _SMALL, anchor="end")
        self.parts.append(
            f'<rect class="axes" x="{_n(axes.left)}" y="{_n(axes.top)}" width="{_n(axes.width)}" '
            f'height="{_n(axes.height)}" fill="none" stroke="#000" stroke-width="0.8"/>'
        )
        self.text(axes.left + axes.width / 2, bottom + 34, xlabel)
        if ylabel:
            widest = max((_width(_label(v, y_step), _SMALL) for v in y_ticks), default=0)
            self.text(axes.left - widest - 14, axes.top + axes.height / 2, ylabel, rotate=True)

    def series(self, axes: _Axes, xs, ys, colour: str, width: float, label: str) -> None:
        """A line through the points, broken where a value is missing or not finite."""
        runs: list[list[str]] = [[]]
        for x, y in zip(xs, ys):
            if y is None or not math.isfinite(y):
                runs.append([])
            else:
                runs[-1].append(f"{_n(axes.x(x))},{_n(axes.y(y))}")
        for points in runs:
            if points:
                self.parts.append(
                    f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
                    f'stroke-width="{width}" stroke-linejoin="round"><title>{escape(label)}</title></polyline>'
                )

    def legend(self, left: float, top: float, entries: list[tuple[str, str]]) -> float:
        """One entry a line (a stroke of the colour, then the label); returns the bottom edge."""
        for k, (label, colour) in enumerate(entries):
            y = top + k * _LINE
            self.line(left, y - 3.5, left + 20, y - 3.5, f'stroke="{colour}" stroke-width="2"')
            self.text(left + 26, y, label, _SMALL, anchor="start")
        return top + len(entries) * _LINE

    def write(self, path: Path, width: float, height: float) -> Path:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{_n(height)}" '
            f'viewBox="0 0 {_n(width)} {_n(height)}" font-family="{_FONT}">'
        )
        background = f'<rect width="{_n(width)}" height="{_n(height)}" fill="#fff"/>'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes("\n".join([head, background, *self.parts, "</svg>", ""]).encode("utf-8"))
        return path


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values covering [low, high], steps of 1, 2, 2.5 or 5 times a power of ten."""
    if not high > low:
        low, high = (low - 1, high + 1) if low == 0 else (low - abs(low) / 10, high + abs(high) / 10)
    raw = (high - low) / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [k * step for k in range(first, last + 1)]


def _span(values) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (min(finite), max(finite)) if finite else (0.0, 1.0)


def _label(value: float, step: float) -> str:
    """A tick value with as many decimals as its step needs."""
    decimals = -math.floor(math.log10(step) + 1e-9)
    if round(step * 10.0**decimals, 6) % 1:  # a step of 2.5 times a power of ten
        decimals += 1
    return f"{value:.{max(0, decimals)}f}"


def _n(value: float) -> str:
    """A coordinate rounded to 0.01 px, without trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _width(text: str, size: int) -> float:
    return len(text) * size * _CHAR


def _value(text: str) -> float:
    return 0.0 if text in ("", "–") else float(text)
