"""The console's pictures as inline SVG, drawn on the server: no script, no CDN. Pure functions of their data.

Every text in a picture goes through `markupsafe.escape`, like every other value the console shows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup, escape

WIDTH = 420
BAR_H, GAP = 18, 6
LABEL_W = 110
COLOURS = {"SUCCEEDED": "#2e7d32", "FAILED": "#c62828", "TIMED_OUT": "#ef6c00", "CANCELLED": "#6d6d6d",
           "RUNNING": "#1565c0"}


def _svg(height: int, body: list[str], title: str) -> Markup:
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{height}" '
                  f'viewBox="0 0 {WIDTH} {height}"><title>{escape(title)}</title>{"".join(body)}</svg>')


def outcome_bars(counts: Mapping[str, int], title: str = "deliveries by outcome") -> Markup:
    """One horizontal bar per outcome, its length the share of the largest, the count at its end."""
    top = max(counts.values(), default=0) or 1
    body = []
    for row, (outcome, count) in enumerate(counts.items()):
        y = row * (BAR_H + GAP)
        length = round((WIDTH - LABEL_W - 50) * count / top)
        colour = COLOURS.get(outcome, "#455a64")
        body.append(f'<text x="0" y="{y + 13}" font-size="12">{escape(outcome)}</text>'
                    f'<rect x="{LABEL_W}" y="{y}" width="{length}" height="{BAR_H}" fill="{colour}"/>'
                    f'<text x="{LABEL_W + length + 6}" y="{y + 13}" font-size="12">{count}</text>')
    return _svg(max(1, len(counts)) * (BAR_H + GAP), body, title)


def duration_histogram(durations: Sequence[float], p50: float | None, p95: float | None, bins: int = 12,
                       title: str = "duration distribution") -> Markup:
    """Jobs per duration bin (equal widths from the shortest to the longest), with p50 and p95 marked.

    Fewer than FEW jobs, or jobs that all took the same time, make no honest histogram: each distinct
    duration is then one bar of its own, labelled with its value (a single value stands in the middle)."""
    axis, plot_w = 130, WIDTH - 20
    if not durations:
        return _svg(40, ['<text x="0" y="20" font-size="12">no finished jobs</text>'], title)
    low, high = min(durations), max(durations)
    if len(durations) < FEW or high - low < 1e-9:
        body, place = _one_bar_each(durations, low, high, plot_w, axis)
    else:
        body, place = _bins(durations, low, high, bins, plot_w, axis)
    for row, (name, value, colour) in enumerate((("p50", p50, "#2e7d32"), ("p95", p95, "#c62828"))):
        if value is not None:
            x = place(value)
            body.append(f'<line x1="{x:.1f}" y1="30" x2="{x:.1f}" y2="{axis}" stroke="{colour}" stroke-width="2" '
                        f'stroke-dasharray="5 3"/><line x1="{row * 110}" y1="10" x2="{row * 110 + 18}" y2="10" '
                        f'stroke="{colour}" stroke-width="2" stroke-dasharray="5 3"/><text x="{row * 110 + 22}" y="14" '
                        f'font-size="11" fill="{colour}">{name} {_seconds(value)}</text>')
    return _svg(axis + 22, body, title)


FEW = 5  # fewer finished jobs than this are drawn one bar per distinct duration
BAR_W = 14  # the width of such a bar


Place = Callable[[float], float]  # where a duration stands on a chart's x axis


def _bins(durations: Sequence[float], low: float, high: float, bins: int, plot_w: float,
          axis: int) -> tuple[list[str], Place]:
    """A histogram of `bins` equal bins from `low` to `high` (> low), the axis labelled at both ends."""
    width, step = (high - low) / bins, plot_w / bins
    counts = [0] * bins
    for value in durations:
        counts[min(bins - 1, int((value - low) / width))] += 1
    tallest = max(counts)
    body = [f'<line x1="0" y1="{axis}" x2="{plot_w}" y2="{axis}" stroke="#999"/>']
    for n, count in enumerate(counts):
        bar = round((axis - 40) * count / tallest)
        body.append(f'<rect x="{n * step + 1:.1f}" y="{axis - bar}" width="{step - 2:.1f}" height="{bar}" fill="#1565c0">'
                    f'<title>{_seconds(low + n * width)}–{_seconds(low + (n + 1) * width)}: {count}</title></rect>')
    body.append(f'<text x="0" y="{axis + 16}" font-size="11">{_seconds(low)}</text>'
                f'<text x="{plot_w}" y="{axis + 16}" font-size="11" text-anchor="end">{_seconds(high)}</text>')
    return body, lambda value: plot_w * (value - low) / (high - low)


def _one_bar_each(durations: Sequence[float], low: float, high: float, plot_w: float,
                  axis: int) -> tuple[list[str], Place]:
    """One bar per distinct duration, centred on its place between the shortest (left) and the longest
    (right), its height the jobs that took it, its value written under it. Narrow bars, so that two
    durations close together stay two bars."""
    half, step = BAR_W / 2 + 1, BAR_W + 2

    def place(value: float) -> float:
        if high - low < 1e-9:
            return plot_w / 2
        return half + (plot_w - step) * min(1.0, max(0.0, (value - low) / (high - low)))

    counts = Counter(durations)
    tallest = max(counts.values())
    body = [f'<line x1="0" y1="{axis}" x2="{plot_w}" y2="{axis}" stroke="#999"/>']
    last_label = -math.inf
    for value, count in sorted(counts.items()):
        x, bar = place(value), round((axis - 40) * count / tallest)
        body.append(f'<rect x="{x - half + 1:.1f}" y="{axis - bar}" width="{step - 2:.1f}" height="{bar}" fill="#1565c0">'
                    f'<title>{_seconds(value)}: {count}</title></rect>')
        if x - last_label >= 60:  # labels closer than that would overlap
            body.append(f'<text x="{x:.1f}" y="{axis + 16}" font-size="11" text-anchor="middle">{_seconds(value)}</text>')
            last_label = x
    return body, place


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 1 else f"{value:.1f} s" if value < 100 else f"{value:.0f} s"
