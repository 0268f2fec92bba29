"""Charts as server-drawn SVG geometry (README "Web console"): the templates draw what these
return, so no script and no inline style is needed, and the data is the usage API's own
(``KeyService.key_usage``/``workspace_usage``: one entry per bucket, zeros included)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.keys.model import REQUEST_OUTCOMES

WIDTH, HEIGHT = 720, 200  # the viewBox of a usage chart
LEFT, BOTTOM, TOP = 44, 22, 8  # room for the axis labels
SPARK_WIDTH, SPARK_HEIGHT = 84, 20
# the console's ranges: (bucket granularity, buckets), for the key's and the workspace's charts
RANGES = {"24h": ("hour", 24), "7d": ("hour", 168), "30d": ("day", 30)}


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    outcome: str  # its CSS class: the colour
    label: str  # the SVG <title>: "2026-01-02 13:00 success: 12"


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    y: float
    text: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    totals: dict[str, int]  # per outcome over the range: the legend and the text equivalent
    total: int


def usage_chart(report: dict[str, Any]) -> Chart:
    """Stacked bars, one per bucket of ``report["series"]``, one segment per outcome."""
    series: Sequence[dict[str, Any]] = report["series"]
    peak = max((sum(entry[o] for o in REQUEST_OUTCOMES) for entry in series), default=0)
    scale = _nice(peak)
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    step = plot_w / max(len(series), 1)
    bars: list[Bar] = []
    for i, entry in enumerate(series):
        bars += _stack(entry, LEFT + i * step, max(step - 1, 0.5), plot_h / scale)
    return Chart(
        WIDTH, HEIGHT, bars,
        [Tick(LEFT - 4, TOP + plot_h * (1 - f), _count(scale * f)) for f in (0, 0.5, 1)],
        _x_ticks(series, step, report["granularity"]),
        dict(report["totals"]), sum(report["totals"][o] for o in REQUEST_OUTCOMES),
    )


def _stack(entry: dict[str, Any], x: float, width: float, per_request: float) -> list[Bar]:
    bars, y = [], float(HEIGHT - BOTTOM)
    for outcome in REQUEST_OUTCOMES:  # shadow_refused: already under a real outcome
        count = entry[outcome]
        if count:
            height = count * per_request
            y -= height
            bars.append(Bar(round(x, 2), round(y, 2), round(width, 2), round(height, 2),
                            outcome, f"{_when(entry['start'])} {outcome}: {count}"))
    return bars


def _x_ticks(series: Sequence[dict[str, Any]], step: float, granularity: str) -> list[Tick]:
    every = max(len(series) // 6, 1)
    form = "%m-%d" if granularity == "day" or len(series) > 48 else "%H:%M"
    return [Tick(LEFT + i * step, HEIGHT - 6, _parse(e["start"]).strftime(form))
            for i, e in enumerate(series) if i % every == 0]


def sparkline(daily: Sequence[int]) -> str:
    """The ``points`` of an SVG polyline over ``daily`` counts (the Keys page's 7 days)."""
    peak = max(max(daily, default=0), 1)
    step = SPARK_WIDTH / max(len(daily) - 1, 1)
    return " ".join(f"{i * step:.1f},{SPARK_HEIGHT - 1 - (n / peak) * (SPARK_HEIGHT - 2):.1f}"
                    for i, n in enumerate(daily))


def _nice(peak: int) -> int:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``peak`` (and at least 1)."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            if magnitude * factor >= peak:
                return magnitude * factor
        magnitude *= 10


def _count(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 10_000 else f"{value:g}"


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _when(stamp: str) -> str:
    return _parse(stamp).strftime("%Y-%m-%d %H:%M UTC")
