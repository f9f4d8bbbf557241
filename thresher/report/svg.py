"""Small inline-SVG charts for `report.html`: stacked bars (vertical or horizontal) and
histograms with threshold markers.

Hand-written rather than matplotlib/plotly: the report needs three chart shapes, must be one
self-contained file that opens offline, and must be cheap to make on every run; matplotlib is
not a dependency (~10 MB more, ~0.5 s import) and plotly's offline HTML embeds ~3 MB of JS.

Every chart is `<svg class="plot" data-plot="<id>">` with its data marks (`rect.mark`) inside
`<g class="marks">`, each with a `<title>` tooltip giving the exact number; all text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
KEPT, DROPPED, THRESHOLD, MUTED = "#009E73", "#D55E00", "#B00020", "#666666"
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def fmt(x: float) -> str:
    """A number for a label: integers with thousands separators, else 4 significant digits."""
    if x is None:
        return "–"
    if not math.isfinite(x):
        return str(x)
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


class Canvas:
    """An SVG of a fixed size with a plot area inside margins; collects elements as strings."""

    def __init__(self, plot_id: str, title: str, width: int, height: int,
                 margin: tuple[int, int, int, int] = (28, 16, 40, 56)):
        self.id, self.title, self.w, self.h = plot_id, title, width, height
        self.top, self.right, self.bottom, self.left = margin
        self.axes: list[str] = []
        self.marks: list[str] = []
        self.overlay: list[str] = []  # drawn over the marks (threshold lines)

    @property
    def inner(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the plot area."""
        return self.left, self.top, self.w - self.right, self.h - self.bottom

    def text(self, x: float, y: float, s: str, anchor: str = "middle", extra: str = "", over: bool = False) -> None:
        el = f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {FONT} {extra}>{escape(s)}</text>'
        (self.overlay if over else self.axes).append(el)

    def line(self, x1: float, y1: float, x2: float, y2: float, colour: str = "#999", extra: str = "",
             over: bool = False) -> None:
        el = f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" {extra}/>'
        (self.overlay if over else self.axes).append(el)

    def bar(self, x: float, y: float, w: float, h: float, colour: str, tip: str) -> None:
        """A data mark; too thin a bar is widened to 1 px so a non-zero count stays visible."""
        if w <= 0 or h <= 0:
            return
        w, h = max(w, 1.0), max(h, 1.0)
        self.marks.append(f'<rect class="mark" x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" '
                          f'fill="{colour}"><title>{escape(tip)}</title></rect>')

    def legend(self, names: Sequence[str], colours: Sequence[str]) -> None:
        x = self.left
        for name, colour in zip(names, colours, strict=True):
            self.axes.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{colour}"/>')
            self.text(x + 14, 15, name, anchor="start")
            x += 24 + 7 * len(name)

    def render(self) -> str:
        return (f'<svg class="plot" data-plot="{escape(self.id)}" xmlns="http://www.w3.org/2000/svg" '
                f'width="{self.w}" height="{self.h}" viewBox="0 0 {self.w} {self.h}" role="img">'
                f'<title>{escape(self.title)}</title>{"".join(self.axes)}'
                f'<g class="marks">{"".join(self.marks)}</g>{"".join(self.overlay)}</svg>')


def _y_axis(c: Canvas, scale, ticks: Sequence[float], label: str) -> None:
    x0, y0, x1, y1 = c.inner
    for t in ticks:
        y = scale(t)
        c.line(x0, y, x1, y, "#e5e5e5")
        c.text(x0 - 4, y + 4, fmt(t), anchor="end")
    c.line(x0, y0, x0, y1)
    c.text(12, (y0 + y1) / 2, label, extra=f'transform="rotate(-90 12 {(y0 + y1) / 2:.1f})"')


def stacked_bars(plot_id: str, title: str, categories: Sequence[str], series: dict[str, Sequence[float]],
                 ylabel: str = "rows", width: int = 720, height: int = 300) -> str:
    """Vertical bars, one per category, stacked by series (e.g. rows per source per step)."""
    c = Canvas(plot_id, title, width, height, margin=(28, 16, 56, 64))
    x0, y0, x1, y1 = c.inner
    top = max([sum(v[i] for v in series.values()) for i in range(len(categories))], default=0) or 1
    ticks = nice_ticks(0, top)
    ymax = max(ticks[-1], top)

    def scale(v: float) -> float:
        return y1 - (y1 - y0) * v / ymax

    _y_axis(c, scale, ticks, ylabel)
    slot = (x1 - x0) / max(len(categories), 1)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    for i, cat in enumerate(categories):
        base = 0.0
        for (name, values), colour in zip(series.items(), colours, strict=True):
            v = float(values[i])
            c.bar(x0 + i * slot + slot * 0.15, scale(base + v), slot * 0.7, scale(base) - scale(base + v), colour,
                  f"{cat} · {name}: {fmt(v)}")
            base += v
        room = max(int(slot / 6.5), 4)  # characters that fit under a bar at 11 px
        label = cat if len(cat) <= room else cat[:room - 1] + "…"
        c.text(x0 + (i + 0.5) * slot, y1 + 14, label)
        c.text(x0 + (i + 0.5) * slot, y1 + 28, fmt(base), extra=f'fill="{MUTED}"')
    c.line(x0, y1, x1, y1)
    c.legend(list(series), colours)
    return c.render()


def horizontal_bars(plot_id: str, title: str, categories: Sequence[str], series: dict[str, Sequence[float]],
                    xlabel: str = "rows", width: int = 720, label_width: int = 260) -> str:
    """Horizontal bars, one per category, stacked by series (e.g. drops per stage and reason)."""
    height = 56 + 22 * len(categories)
    c = Canvas(plot_id, title, width, height, margin=(28, 60, 28, label_width))
    x0, y0, x1, y1 = c.inner
    top = max([sum(v[i] for v in series.values()) for i in range(len(categories))], default=0) or 1
    ticks = nice_ticks(0, top)
    xmax = max(ticks[-1], top)

    def scale(v: float) -> float:
        return x0 + (x1 - x0) * v / xmax

    for t in ticks:
        c.line(scale(t), y0, scale(t), y1, "#e5e5e5")
        c.text(scale(t), y1 + 14, fmt(t))
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    for i, cat in enumerate(categories):
        y, base = y0 + i * 22 + 3, 0.0
        for (name, values), colour in zip(series.items(), colours, strict=True):
            v = float(values[i])
            c.bar(scale(base), y, scale(base + v) - scale(base), 16, colour, f"{cat} · {name}: {fmt(v)}")
            base += v
        c.text(x0 - 6, y + 12, cat if len(cat) <= 42 else cat[:41] + "…", anchor="end")
        c.text(scale(base) + 4, y + 12, fmt(base), anchor="start", extra=f'fill="{MUTED}"')
    c.line(x0, y0, x0, y1)
    c.text((x0 + x1) / 2, y1 + 26, xlabel)
    c.legend(list(series), colours)
    return c.render()


def histogram(plot_id: str, title: str, edges: Sequence[float], stacks: dict[str, Sequence[float]],
              colours: Sequence[str], markers: Sequence[tuple[float, str, str]] = (), xlabel: str = "",
              log: bool = False, width: int = 460, height: int = 240) -> str:
    """Stacked bins (e.g. kept and dropped rows) over `edges`, with vertical markers
    `(value, label, colour)` (thresholds). `log`: a log10(1 + count) y scale, for skewed scores."""
    c = Canvas(plot_id, title, width, height, margin=(28, 16, 44, 56))
    x0, y0, x1, y1 = c.inner
    n = len(edges) - 1
    totals = [sum(s[i] for s in stacks.values()) for i in range(n)]
    top = max(totals, default=0) or 1
    if log:
        ticks = [10.0 ** k for k in range(int(math.log10(top)) + 1)]
        ymax = math.log10(1 + top) * 1.15  # headroom for the marker labels

        def scale(v: float) -> float:
            return y1 - (y1 - y0) * math.log10(1 + v) / ymax
    else:
        ticks = nice_ticks(0, top * 1.1)
        ymax = max(ticks[-1], top * 1.1)

        def scale(v: float) -> float:
            return y1 - (y1 - y0) * v / ymax

    _y_axis(c, scale, ticks, "rows in sample" + (" (log)" if log else ""))
    lo, hi = float(edges[0]), float(edges[-1])
    marker_values = [m[0] for m in markers if math.isfinite(m[0])]
    lo, hi = min([lo, *marker_values]), max([hi, *marker_values])
    span = (hi - lo) or 1.0

    def xs(v: float) -> float:
        return x0 + (x1 - x0) * (v - lo) / span

    for i in range(n):
        base = 0.0
        for (name, counts), colour in zip(stacks.items(), colours, strict=True):
            v = float(counts[i])
            left, right = xs(edges[i]), xs(edges[i + 1])
            c.bar(left + 0.5, scale(base + v), right - left - 1, scale(base) - scale(base + v), colour,
                  f"{fmt(edges[i])} – {fmt(edges[i + 1])} · {name}: {fmt(v)}")
            base += v
    for t in nice_ticks(lo, hi):
        c.text(xs(t), y1 + 14, fmt(t))
    c.line(x0, y1, x1, y1)
    c.text((x0 + x1) / 2, y1 + 32, xlabel)
    for k, (value, label, colour) in enumerate(markers):
        if math.isfinite(value):
            c.line(xs(value), y0, xs(value), y1, colour, 'stroke-width="2" stroke-dasharray="5 3"', over=True)
            right = xs(value) > (x0 + x1) / 2  # label on the side with room
            c.text(xs(value) + (-3 if right else 3), y0 + 10 + 12 * k, label, anchor="end" if right else "start",
                   extra=f'fill="{colour}" stroke="#fff" stroke-width="3" paint-order="stroke"', over=True)
    c.legend(list(stacks), colours)
    return c.render()
