"""Server-rendered SVG charts (line, bar, histogram, ROC, scatter): no JavaScript, no external assets.

Each chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` that states the data in words, so a screen
reader gets the content; every text is escaped. The functions return safe strings for templates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 16, 40
PALETTE = ("#4fa3e0", "#e0a030", "#7bc67b", "#ff5a4f", "#b28ddb", "#8a949e", "#e07bb8", "#5fd0c8")
AXIS = "#5a636d"
TEXT = "#c8ced5"
MAX_X_LABELS = 8


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if abs(v) >= 10 else f"{v:.3g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 × 10^k steps)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _open(title: str, desc: str, width: int = WIDTH, height: int = HEIGHT) -> tuple[list[str], str]:
    ident = "c" + hashlib.sha1(f"{title}|{desc}".encode(), usedforsecurity=False).hexdigest()[:10]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-labelledby="{ident}-t {ident}-d">',
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}</desc>',
    ]
    return parts, ident


def _close(parts: list[str]) -> SafeString:
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text above is escaped


def _empty(title: str, width: int = WIDTH, height: int = HEIGHT, text: str = "No data yet") -> SafeString:
    parts, _ = _open(title, f"{text}.", width, height)
    parts.append(
        f'<text x="{width / 2}" y="{height / 2}" fill="{TEXT}" text-anchor="middle" font-size="13">'
        f"{escape(text)}</text>"
    )
    return _close(parts)


@dataclass(frozen=True)
class _Frame:
    y_min: float
    y_max: float
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def plot_w(self) -> float:
        return self.width - LEFT - RIGHT

    @property
    def plot_h(self) -> float:
        return self.height - TOP - BOTTOM

    def y(self, value: float) -> float:
        span = self.y_max - self.y_min or 1.0
        return TOP + self.plot_h * (1.0 - (value - self.y_min) / span)


def _y_axis(parts: list[str], frame: _Frame, ticks: list[float], label: str) -> None:
    for tick in ticks:
        y = frame.y(tick)
        parts.append(
            f'<line x1="{LEFT}" x2="{frame.width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{AXIS}" '
            f'stroke-width="0.5" stroke-dasharray="2,3"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" fill="{TEXT}" font-size="11" text-anchor="end">{_fmt(tick)}</text>'
        )
    if label:
        parts.append(
            f'<text x="12" y="{TOP + frame.plot_h / 2:.1f}" fill="{TEXT}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 12 {TOP + frame.plot_h / 2:.1f})">{escape(label)}</text>'
        )


def _x_labels(parts: list[str], frame: _Frame, labels: Sequence[str], centres: Sequence[float]) -> None:
    stride = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    for i in range(0, len(labels), stride):
        parts.append(
            f'<text x="{centres[i]:.1f}" y="{frame.height - BOTTOM + 16}" fill="{TEXT}" font-size="11" '
            f'text-anchor="middle">{escape(labels[i])}</text>'
        )


def _legend(parts: list[str], names: Sequence[str], width: int = WIDTH) -> None:
    x = LEFT
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{HEIGHT - 5}" fill="{TEXT}" font-size="11">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
        if x > width - 60:
            break


def _describe(x_labels: Sequence[str], series: Sequence[Series]) -> str:
    def show(v: float | None) -> str:
        return "none" if v is None else _fmt(v)

    chunks = []
    for s in series:
        points = ", ".join(f"{x}: {show(v)}" for x, v in zip(x_labels, s.values, strict=False))
        chunks.append(f"{s.name}: {points}." if points else f"{s.name}: no values.")
    return " ".join(chunks)


def line_chart(
    *,
    title: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    y_label: str = "",
    y_min: float = 0.0,
    y_max: float | None = None,
    reference: float | None = None,
    reference_label: str = "",
    empty_text: str = "No data yet",
) -> SafeString:
    """One polyline per series over categorical x values; gaps where a value is None; an optional reference line."""
    values = [v for s in series for v in s.values if v is not None]
    if not x_labels or not values:
        return _empty(title, text=empty_text)
    top = max([*values, reference or y_min, y_max or y_min])
    ticks = nice_ticks(y_min, top if top > y_min else y_min + 1.0)
    frame = _Frame(ticks[0], ticks[-1])
    desc = _describe(x_labels, series)
    if reference is not None:
        desc += f" Reference line at {_fmt(reference)}{' (' + reference_label + ')' if reference_label else ''}."
    parts, _ = _open(title, desc)
    _y_axis(parts, frame, ticks, y_label)
    step = frame.plot_w / max(len(x_labels) - 1, 1)
    xs = [LEFT + (i * step if len(x_labels) > 1 else frame.plot_w / 2) for i in range(len(x_labels))]
    if reference is not None:
        y = frame.y(reference)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ff5a4f" stroke-width="1" '
            f'stroke-dasharray="6,3"><title>{escape(reference_label or "reference")}</title></line>'
        )
    for i, s in enumerate(series):
        _polyline(parts, frame, xs, s, PALETTE[i % len(PALETTE)])
    _x_labels(parts, frame, x_labels, xs)
    _legend(parts, [s.name for s in series])
    return _close(parts)


def _polyline(parts: list[str], frame: _Frame, xs: Sequence[float], s: Series, colour: str) -> None:
    run: list[str] = []
    for x, v in zip(xs, s.values, strict=False):
        if v is None:
            if run:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(run)}"/>')
            run = []
            continue
        run.append(f"{x:.1f},{frame.y(v):.1f}")
        parts.append(f'<circle cx="{x:.1f}" cy="{frame.y(v):.1f}" r="2.5" fill="{colour}"/>')
    if run:
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(run)}"/>')


def bar_chart(*, title: str, categories: Sequence[str], series: Sequence[Series], y_label: str = "") -> SafeString:
    """Stacked bars, one per category; missing values count as zero."""
    totals = [sum(s.values[i] or 0.0 for s in series) for i in range(len(categories))]
    if not categories or not any(totals):
        return _empty(title)
    ticks = nice_ticks(0.0, max(totals))
    frame = _Frame(0.0, ticks[-1])
    parts, _ = _open(title, _describe(categories, series))
    _y_axis(parts, frame, ticks, y_label)
    slot = frame.plot_w / len(categories)
    bar_w = max(2.0, slot * 0.7)
    centres = []
    for i, category in enumerate(categories):
        x = LEFT + slot * i + (slot - bar_w) / 2
        centres.append(x + bar_w / 2)
        base = 0.0
        for j, s in enumerate(series):
            value = s.values[i] or 0.0
            if value <= 0:
                continue
            y_top, y_bottom = frame.y(base + value), frame.y(base)
            parts.append(
                f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" height="{y_bottom - y_top:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(category)} {escape(s.name)}: '
                f"{_fmt(value)}</title></rect>"
            )
            base += value
    _x_labels(parts, frame, categories, centres)
    _legend(parts, [s.name for s in series])
    return _close(parts)


def histogram_chart(
    *,
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    baseline: Sequence[float] | None = None,
    x_label: str = "score",
) -> SafeString:
    """Bars of the share of cases per bin; the baseline's shares drawn as an outline step for comparison."""
    total = sum(counts)
    if total == 0 or len(edges) != len(counts) + 1:
        return _empty(title)
    shares = [c / total for c in counts]
    base_shares = None
    if baseline is not None and sum(baseline) > 0:
        base_shares = [b / sum(baseline) for b in baseline]
    ticks = nice_ticks(0.0, max(shares + (base_shares or [])))
    frame = _Frame(0.0, ticks[-1])
    labels = [f"{edges[i]:.2g}-{edges[i + 1]:.2g}" for i in range(len(counts))]
    names = ["share of studies"] + (["baseline"] if base_shares else [])
    described = [Series(names[0], shares)] + ([Series("baseline", base_shares)] if base_shares else [])
    parts, _ = _open(title, f"{total} cases by {x_label}. " + _describe(labels, described))
    _y_axis(parts, frame, ticks, "share")
    slot = frame.plot_w / len(counts)
    for i, share in enumerate(shares):
        y = frame.y(share)
        parts.append(
            f'<rect x="{LEFT + slot * i + 1:.1f}" y="{y:.1f}" width="{slot - 2:.1f}" height="{frame.y(0) - y:.1f}" '
            f'fill="{PALETTE[0]}"><title>{labels[i]}: {counts[i]} ({share:.1%})</title></rect>'
        )
    if base_shares:
        points = []
        for i, share in enumerate(base_shares):
            points += [
                f"{LEFT + slot * i:.1f},{frame.y(share):.1f}",
                f"{LEFT + slot * (i + 1):.1f},{frame.y(share):.1f}",
            ]
        parts.append(f'<polyline fill="none" stroke="{PALETTE[1]}" stroke-width="2" points="{" ".join(points)}"/>')
    _x_labels(parts, frame, labels, [LEFT + slot * (i + 0.5) for i in range(len(counts))])
    _legend(parts, names)
    return _close(parts)


def roc_chart(
    *, title: str, fpr: Sequence[float], tpr: Sequence[float], point: tuple[float, float] | None = None
) -> SafeString:
    """ROC curve on a square plot with the chance diagonal and the current operating point."""
    size = 320
    if len(fpr) < 2:
        return _empty(title, size, size)
    frame = _Frame(0.0, 1.0, size, size)
    side = min(frame.plot_w, frame.plot_h)
    desc = f"ROC curve through {len(fpr)} points."
    if point is not None:
        desc += f" Operating point: false-positive rate {point[0]:.3f}, sensitivity {point[1]:.3f}."
    parts, _ = _open(title, desc, size, size)

    def xy(x: float, y: float) -> str:
        return f"{LEFT + side * x:.1f},{TOP + side * (1 - y):.1f}"

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<text x="{LEFT - 6}" y="{TOP + side * (1 - tick) + 4:.1f}" fill="{TEXT}" font-size="11" '
            f'text-anchor="end">{tick:g}</text><text x="{LEFT + side * tick:.1f}" y="{TOP + side + 16:.1f}" '
            f'fill="{TEXT}" font-size="11" text-anchor="middle">{tick:g}</text>'
        )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{side:.1f}" height="{side:.1f}" fill="none" stroke="{AXIS}"/>'
        f'<line x1="{LEFT}" y1="{TOP + side:.1f}" x2="{LEFT + side:.1f}" y2="{TOP}" stroke="{AXIS}" '
        f'stroke-dasharray="4,4"/>'
        f'<polyline fill="none" stroke="{PALETTE[0]}" stroke-width="2" '
        f'points="{" ".join(xy(x, y) for x, y in zip(fpr, tpr, strict=True))}"/>'
        f'<text x="{LEFT + side / 2:.1f}" y="{size - 6}" fill="{TEXT}" font-size="11" text-anchor="middle">'
        f"1 - specificity</text>"
        f'<text x="12" y="{TOP + side / 2:.1f}" fill="{TEXT}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + side / 2:.1f})">sensitivity</text>'
    )
    if point is not None:
        cx, cy = xy(*point).split(",")
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="5" fill="{PALETTE[3]}"><title>current threshold</title></circle>')
    return _close(parts)


def scatter_chart(
    *,
    title: str,
    points: Sequence[tuple[float, float]],
    x_label: str,
    y_label: str,
    x_line: float | None = None,
    y_line: float | None = None,
    max_points: int = 2000,
) -> SafeString:
    """Scores of two models on the same studies, both in 0..1, on a square plot with the diagonal and each model's
    threshold as a dashed line; beyond ``max_points`` an even subsample is drawn (the description says so)."""
    size = 320
    if not points:
        return _empty(title, size, size)
    shown = list(points)[:: max(1, math.ceil(len(points) / max_points))]
    frame = _Frame(0.0, 1.0, size, size)
    side = min(frame.plot_w, frame.plot_h)
    desc = f"Scatter of {len(points)} studies" + (f", {len(shown)} drawn." if len(shown) < len(points) else ".")
    parts, _ = _open(title, desc, size, size)

    def xy(x: float, y: float) -> tuple[float, float]:
        return LEFT + side * min(max(x, 0.0), 1.0), TOP + side * (1 - min(max(y, 0.0), 1.0))

    for tick in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{LEFT - 6}" y="{TOP + side * (1 - tick) + 4:.1f}" fill="{TEXT}" font-size="11" '
            f'text-anchor="end">{tick:g}</text><text x="{LEFT + side * tick:.1f}" y="{TOP + side + 16:.1f}" '
            f'fill="{TEXT}" font-size="11" text-anchor="middle">{tick:g}</text>'
        )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{side:.1f}" height="{side:.1f}" fill="none" stroke="{AXIS}"/>'
        f'<line x1="{LEFT}" y1="{TOP + side:.1f}" x2="{LEFT + side:.1f}" y2="{TOP}" stroke="{AXIS}" '
        f'stroke-dasharray="4,4"/>'
    )
    if x_line is not None:
        x0, _ = xy(x_line, 0.0)
        parts.append(f'<line x1="{x0:.1f}" y1="{TOP}" x2="{x0:.1f}" y2="{TOP + side:.1f}" stroke="{PALETTE[1]}" '
                     f'stroke-dasharray="3,3"/>')  # fmt: skip
    if y_line is not None:
        _, y0 = xy(0.0, y_line)
        parts.append(f'<line x1="{LEFT}" y1="{y0:.1f}" x2="{LEFT + side:.1f}" y2="{y0:.1f}" stroke="{PALETTE[1]}" '
                     f'stroke-dasharray="3,3"/>')  # fmt: skip
    for x, y in shown:
        cx, cy = xy(x, y)
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="{PALETTE[0]}" fill-opacity="0.6"/>')
    parts.append(
        f'<text x="{LEFT + side / 2:.1f}" y="{size - 6}" fill="{TEXT}" font-size="11" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text x="12" y="{TOP + side / 2:.1f}" fill="{TEXT}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + side / 2:.1f})">{escape(y_label)}</text>'
    )
    return _close(parts)
