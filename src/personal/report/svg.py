"""Tiny dependency-free SVG charts for self-contained HTML reports (no matplotlib needed).

Two shapes cover the audit: a bar chart (histograms) and a line chart (series over time, with
optional horizontal reference lines such as a privacy budget). Text is escaped; sizes are in
pixels; every chart is a standalone ``<svg>`` element.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 24, 40
COLORS = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6")


def _frame(title: str, x_label: str, y_label: str, body: list[str]) -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" '
        'stroke="#444"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11">'
        f"{escape(x_label)}</text>",
        f'<text x="12" y="{HEIGHT / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {HEIGHT / 2})">{escape(y_label)}</text>',
        *body,
        "</svg>",
    ]
    return "\n".join(parts)


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def _tick(x: float, y: float, text: str, anchor: str) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="10">{escape(text)}</text>'
    )


def bar_chart(
    labels: Sequence[str], values: Sequence[float], *, title: str, x_label: str, y_label: str
) -> str:
    """Vertical bars, one per label (e.g. a histogram with bin labels)."""
    top = max([*values, 1e-12])
    y = _scale(0.0, top, HEIGHT - BOTTOM, TOP)
    slot = (WIDTH - LEFT - RIGHT) / max(len(values), 1)
    body = [_tick(LEFT - 4, y(top) + 4, f"{top:g}", "end"), _tick(LEFT - 4, y(0) + 4, "0", "end")]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x0 = LEFT + i * slot + 2
        body.append(
            f'<rect x="{x0:.1f}" y="{y(value):.1f}" width="{slot - 4:.1f}" '
            f'height="{y(0) - y(value):.1f}" fill="{COLORS[0]}"><title>{escape(label)}: '
            f"{value:g}</title></rect>"
        )
        if len(values) <= 12 or i % max(1, len(values) // 6) == 0:
            body.append(_tick(x0 + slot / 2, HEIGHT - BOTTOM + 12, label, "middle"))
    return _frame(title, x_label, y_label, body)


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    hlines: dict[str, float] | None = None,
) -> str:
    """Lines of ``(x, y)`` points, one per named series, plus labelled horizontal lines."""
    points = [p for s in series.values() for p in s]
    refs = list((hlines or {}).values())
    xs = [x for x, _ in points] or [0.0, 1.0]
    ys = [y for _, y in points] + refs or [0.0, 1.0]
    x = _scale(min(xs), max(xs), LEFT, WIDTH - RIGHT)
    lo, hi = min(0.0, *ys), max(ys) * 1.05 or 1.0
    y = _scale(lo, hi, HEIGHT - BOTTOM, TOP)
    body = [
        _tick(LEFT - 4, y(hi) + 4, f"{hi:.3g}", "end"),
        _tick(LEFT - 4, y(lo) + 4, f"{lo:.3g}", "end"),
        _tick(LEFT, HEIGHT - BOTTOM + 12, f"{min(xs):g}", "middle"),
        _tick(WIDTH - RIGHT, HEIGHT - BOTTOM + 12, f"{max(xs):g}", "middle"),
    ]
    for i, (name, value) in enumerate((hlines or {}).items()):
        body.append(
            f'<line x1="{LEFT}" y1="{y(value):.1f}" x2="{WIDTH - RIGHT}" y2="{y(value):.1f}" '
            f'stroke="#888" stroke-dasharray="4 3"/>'
        )
        body.append(_tick(WIDTH - RIGHT - 4, y(value) - 4 - 12 * i, f"{name} {value:g}", "end"))
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        body.extend(
            f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="2.5" fill="{color}"/>' for a, b in pts
        )
        body.append(_tick(LEFT + 8, TOP + 12 + 12 * i, name, "start").replace(
            'font-size="10"', f'font-size="10" fill="{color}"'
        ))  # fmt: skip
    return _frame(title, x_label, y_label, body)
