"""Tiny dependency-free SVG charts for self-contained HTML reports (no matplotlib needed).

Two shapes cover the audit's page (:mod:`personal.privacy.audit.page`): a histogram (bars over
numeric bin edges) and a line chart (series over a numeric or time axis, with optional
horizontal reference lines such as a privacy budget). Both draw labelled axes with "nice" ticks
(1, 2 or 5 times a power of ten; dates on a time axis), rounded tick labels, and a legend below
the plot area, never on the lines. Text is escaped; sizes are in pixels; every chart is a
standalone ``<svg>`` element.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT = 600, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 28, 52
COLORS = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    exponent = math.floor(math.log10(raw))
    step = next(m * 10**exponent for m in (1, 2, 5, 10) if m * 10**exponent >= raw * 0.999)
    start = math.floor(lo / step + 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def format_number(v: float) -> str:
    """A tick label: at most 4 significant digits, no float noise (``0.1``, ``7.6``, ``1e-06``)."""
    return f"{v:.4g}"


def _frame(title: str, x_label: str, y_label: str, body: list[str]) -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'font-family="system-ui,sans-serif">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
        *body,
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" '
        'stroke="#444"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - BOTTOM + 32}" text-anchor="middle" '
        f'font-size="11">{escape(x_label)}</text>',
        f'<text x="14" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text>',
        "</svg>",
    ]
    return "\n".join(parts)


def _scale(lo: float, hi: float, out_lo: float, out_hi: float) -> Callable[[float], float]:
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def _text(x: float, y: float, text: str, anchor: str, extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="10"{extra}>'
        f"{escape(text)}</text>"
    )


def _y_axis(
    ticks: Sequence[float],
    y: Callable[[float], float],
    fmt: Callable[[float], str] = format_number,
) -> list[str]:
    out = []
    for t in ticks:
        out.append(
            f'<line x1="{LEFT}" y1="{y(t):.1f}" x2="{WIDTH - RIGHT}" y2="{y(t):.1f}" '
            'stroke="#eee"/>'
        )
        out.append(f'<line x1="{LEFT - 4}" y1="{y(t):.1f}" x2="{LEFT}" y2="{y(t):.1f}" '
                   'stroke="#444"/>')  # fmt: skip
        out.append(_text(LEFT - 6, y(t) + 3.5, fmt(t), "end"))
    return out


def _x_axis(
    ticks: Sequence[float], x: Callable[[float], float], fmt: Callable[[float], str]
) -> list[str]:
    out = []
    for t in ticks:
        out.append(
            f'<line x1="{x(t):.1f}" y1="{HEIGHT - BOTTOM}" x2="{x(t):.1f}" '
            f'y2="{HEIGHT - BOTTOM + 4}" stroke="#444"/>'
        )
        out.append(_text(x(t), HEIGHT - BOTTOM + 15, fmt(t), "middle"))
    return out


def histogram(
    edges: Sequence[float], counts: Sequence[float], *, title: str, x_label: str, y_label: str
) -> str:
    """Bars over numeric bin ``edges`` (len(counts) + 1 of them), ticks at the edges."""
    lo, hi = float(edges[0]), float(edges[-1])
    x = _scale(lo, hi, LEFT + 6, WIDTH - RIGHT - 6)
    y_ticks = nice_ticks(0.0, max([*counts, 1]), 4)
    y_ticks = [t for t in y_ticks if float(t).is_integer()] or [0.0, 1.0]
    y = _scale(0.0, y_ticks[-1], HEIGHT - BOTTOM, TOP)
    body = _y_axis(y_ticks, y, lambda v: f"{v:.0f}")
    for i, value in enumerate(counts):
        x0, x1 = x(edges[i]), x(edges[i + 1])
        body.append(
            f'<rect x="{x0 + 1:.1f}" y="{y(value):.1f}" width="{max(x1 - x0 - 2, 1):.1f}" '
            f'height="{y(0) - y(value):.1f}" fill="{COLORS[0]}"><title>'
            f"{format_number(edges[i])}–{format_number(edges[i + 1])}: {value:g}</title></rect>"
        )
    shown = list(edges)
    if len(shown) > 9:  # keep the labels readable: every k-th edge
        k = math.ceil(len(shown) / 8)
        shown = shown[::k]
    body.extend(_x_axis(shown, x, format_number))
    return _frame(title, x_label, y_label, body)


def time_ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], Callable[[float], str]]:
    """Ticks for a time axis in POSIX seconds and the label format that fits their span."""
    span = hi - lo
    if span <= 0:
        return [lo], lambda v: datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%d %H:%M")
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600,
             12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400,
             365 * 86400)  # fmt: skip
    step = next((s for s in steps if span / s <= count), steps[-1])
    start = math.ceil(lo / step) * step
    ticks = [float(t) for t in range(int(start), int(hi) + 1, step)] or [lo]
    fmt = "%Y-%m-%d" if step >= 86400 else "%m-%d %H:%M" if step >= 60 else "%H:%M:%S"
    return ticks, lambda v: datetime.fromtimestamp(v, UTC).strftime(fmt)


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    hlines: dict[str, float] | None = None,
    time_axis: bool = False,
) -> str:
    """Lines of ``(x, y)`` points, one per named series, plus labelled horizontal lines.

    ``time_axis``: x values are POSIX seconds, ticked with dates. The legend sits below the
    plot area, off the lines.
    """
    points = [p for s in series.values() for p in s]
    refs = list((hlines or {}).values())
    xs = [x for x, _ in points] or [0.0, 1.0]
    ys = [y for _, y in points] + refs or [0.0, 1.0]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        pad = 3600.0 if time_axis else 0.5
        x_lo, x_hi = x_lo - pad, x_hi + pad
    if time_axis:
        x_ticks, x_fmt = time_ticks(x_lo, x_hi)
    else:
        x_ticks, x_fmt = nice_ticks(x_lo, x_hi), format_number
        x_lo, x_hi = min(x_lo, x_ticks[0]), max(x_hi, x_ticks[-1])
    x = _scale(x_lo, x_hi, LEFT + 8, WIDTH - RIGHT - 8)
    y_ticks = nice_ticks(min(0.0, *ys), max(ys) * 1.05 or 1.0, 5)
    y = _scale(y_ticks[0], y_ticks[-1], HEIGHT - BOTTOM, TOP)
    body = _y_axis(y_ticks, y)
    body.extend(_x_axis(x_ticks, x, x_fmt))
    legend: list[tuple[str, str, bool]] = []
    for name, value in (hlines or {}).items():
        body.append(
            f'<line x1="{LEFT}" y1="{y(value):.1f}" x2="{WIDTH - RIGHT}" y2="{y(value):.1f}" '
            f'stroke="#888" stroke-dasharray="4 3"/>'
        )
        legend.append((f"{name} ({format_number(value)})", "#888", True))
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        body.extend(
            f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="2.5" fill="{color}"/>' for a, b in pts
        )
        legend.append((name, color, False))
    cursor = LEFT
    for name, color, dashed in legend:  # below the x-axis label line: never over a line
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        yy = HEIGHT - 8
        body.append(f'<line x1="{cursor}" y1="{yy - 3}" x2="{cursor + 18}" y2="{yy - 3}" '
                    f'stroke="{color}" stroke-width="2"{dash}/>')  # fmt: skip
        body.append(_text(cursor + 22, yy, name, "start"))
        cursor += 30 + 6 * len(name)
    return _frame(title, x_label, y_label, body)
