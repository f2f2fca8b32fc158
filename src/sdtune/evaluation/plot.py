"""A small line chart as inline SVG: metrics across stages and checkpoints, readable offline with no plotting
library (matplotlib would be a heavy dependency for one chart). It scales to its container (``width: 100%``),
so it always fits the page."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _nice_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if 0.0 <= lo and hi <= 1.0:
        return 0.0, 1.0  # fractions: always the whole range, so charts compare
    if lo == hi:
        return lo - 1.0, hi + 1.0
    pad = (hi - lo) * 0.08
    return lo - pad, hi + pad


def line_chart_svg(x_labels: Sequence[str], series: dict[str, Sequence[float | None]],
                   spread: dict[str, Sequence[float | None]] | None = None, *, title: str = "",
                   y_label: str = "", width: int = 760, height: int = 340) -> str:
    """An SVG line chart: one line per series over the categorical ``x_labels`` (None = no point), optional
    +-``spread`` bars, a legend on the right. ``width``/``height`` set the drawing's proportions only."""
    e = html.escape
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    spread = spread or {}
    fractions = bool(values) and all(0.0 <= v <= 1.0 for v in values)
    for name, errs in spread.items():
        for v, s in zip(series.get(name, []), errs, strict=False):
            if v is not None and s and not fractions:  # a fraction's axis stays 0..1; its bars are clipped
                values += [v - s, v + s]
    lo, hi = _nice_range(values or [0.0, 1.0])
    left, right, top, bottom = 48, 190, 28 if title else 12, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(x_labels), 1)

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{e(title or y_label)}" '
             'xmlns="http://www.w3.org/2000/svg" '
             'style="width:100%;max-width:900px;height:auto;font-family:sans-serif">']
    if title:
        parts.append(f'<text x="{left}" y="16" font-size="14" font-weight="600">{e(title)}</text>')
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.2f}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>')
    for i, label in enumerate(x_labels):
        parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">'
                     f'{e(label)}</text>')
    if y_label:
        parts.append(f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="11" text-anchor="middle" '
                     f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{e(y_label)}</text>')
    for k, (name, vs) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [(x(i), y(v)) for i, v in enumerate(vs) if v is not None and math.isfinite(v)]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, v in enumerate(vs):
            if v is None or not math.isfinite(v):
                continue
            err = (spread.get(name) or [None] * len(vs))[i] if name in spread else None
            if err:
                low, high = max(v - err, lo), min(v + err, hi)
                parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(low):.1f}" y2="{y(high):.1f}" '
                             f'stroke="{colour}" stroke-width="1.5"/>')
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{colour}">'
                         f'<title>{e(name)}: {v:.3f}</title></circle>')
        ly = top + 14 + k * 18
        parts.append(f'<rect x="{left + plot_w + 14}" y="{ly - 9}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{left + plot_w + 32}" y="{ly + 1}" font-size="12">{e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
