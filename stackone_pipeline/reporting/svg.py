"""Small, dependency-free SVG time-series charts (lines, bars, a threshold, marked points)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#ad494a",
    "#637939",
    "#7b4173",
    "#3182bd",
    "#e6550d",
)
_TICK_STEPS = [timedelta(minutes=m) for m in (15, 30)] + [timedelta(hours=h) for h in (1, 2, 3, 6, 12, 24, 48, 168)]


@dataclass
class Series:
    name: str
    points: list[tuple[datetime, float | None]]
    color: str
    width: float = 1.5
    dash: str | None = None
    max_gap: timedelta = timedelta(hours=1)  # a longer gap between points breaks the line


@dataclass
class Bar:
    start: datetime
    end: datetime
    value: float
    color: str = "#9ecae1"
    title: str = ""


@dataclass
class Marker:
    at: datetime
    value: float
    title: str
    color: str = "#d62728"


@dataclass
class Chart:
    title: str
    start: datetime
    end: datetime
    y_format: Callable[[float], str]
    series: list[Series] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    threshold: float | None = None
    threshold_label: str = ""
    width: int = 960
    height: int = 300
    left: int = 70
    right: int = 20
    top: int = 30
    bottom: int = 40

    def render(self) -> str:
        values = [v for s in self.series for _, v in s.points if v is not None]
        values += [b.value for b in self.bars] + [m.value for m in self.markers]
        if self.threshold is not None:
            values.append(self.threshold)
        y_max = _nice_ceiling(max(values, default=1.0) * 1.08 or 1.0)
        pw, ph = self.width - self.left - self.right, self.height - self.top - self.bottom
        span = (self.end - self.start).total_seconds() or 1.0

        def x(t: datetime) -> float:
            return self.left + (t - self.start).total_seconds() / span * pw

        def y(v: float) -> float:
            return self.top + ph - v / y_max * ph

        out = [
            f'<svg viewBox="0 0 {self.width} {self.height}" '
            f'width="{self.width}" height="{self.height}" role="img" aria-label="{escape(self.title)}" '
            'font-family="sans-serif" font-size="11">',
            f'<text x="{self.left}" y="18" font-size="14" font-weight="bold">{escape(self.title)}</text>',
        ]
        for i in range(6):  # horizontal grid and y labels
            v = y_max * i / 5
            out.append(
                f'<line x1="{self.left}" x2="{self.left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e5e5e5"/>'
            )
            out.append(
                f'<text x="{self.left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{escape(self.y_format(v))}</text>'
            )
        step = next((s for s in _TICK_STEPS if span / s.total_seconds() <= 12), _TICK_STEPS[-1])
        fmt = "%H:%M" if span <= 2 * 86400 else "%m-%d %H:%M"
        t = _ceil_time(self.start, step)
        while t <= self.end:
            out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{self.top}" y2="{self.top + ph}" stroke="#f0f0f0"/>')
            out.append(f'<text x="{x(t):.1f}" y="{self.top + ph + 16}" text-anchor="middle">{t.strftime(fmt)}</text>')
            t += step
        out.append(f'<text x="{self.left + pw}" y="{self.height - 6}" text-anchor="end" fill="#666">UTC</text>')
        for b in self.bars:
            x0, x1 = x(b.start), x(b.end)
            out.append(
                f'<rect x="{x0 + 0.5:.1f}" y="{y(b.value):.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
                f'height="{y(0) - y(b.value):.1f}" fill="{b.color}"><title>{escape(b.title)}</title></rect>'
            )
        for s in self.series:
            for run in _runs(s.points, s.max_gap):
                pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
                dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
                if len(run) == 1:
                    out.append(
                        f'<circle cx="{x(run[0][0]):.1f}" cy="{y(run[0][1]):.1f}" r="2" fill="{s.color}">'
                        f"<title>{escape(s.name)}</title></circle>"
                    )
                else:
                    out.append(
                        f'<polyline points="{pts}" fill="none" stroke="{s.color}" stroke-width="{s.width}"{dash}>'
                        f"<title>{escape(s.name)}</title></polyline>"
                    )
        if self.threshold is not None:
            ty = y(self.threshold)
            out.append(
                f'<line x1="{self.left}" x2="{self.left + pw}" y1="{ty:.1f}" y2="{ty:.1f}" '
                'stroke="#d62728" stroke-dasharray="6 4"/>'
            )
            out.append(
                f'<text x="{self.left + pw - 4}" y="{ty - 4:.1f}" text-anchor="end" fill="#d62728">'
                f"{escape(self.threshold_label)}</text>"
            )
        for m in self.markers:
            out.append(
                f'<circle cx="{x(m.at):.1f}" cy="{y(m.value):.1f}" r="5" fill="none" stroke="{m.color}" '
                f'stroke-width="2"><title>{escape(m.title)}</title></circle>'
            )
        out.append(f'<rect x="{self.left}" y="{self.top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        out.append("</svg>")
        return "\n".join(out)


def legend(items: list[tuple[str, str]]) -> str:
    """HTML legend: colour swatch + name."""
    return (
        '<div class="legend">'
        + "".join(f'<span><i style="background:{c}"></i>{escape(n)}</span>' for n, c in items)
        + "</div>"
    )


def _runs(points, max_gap: timedelta):
    run, prev = [], None
    for t, v in sorted(points, key=lambda p: p[0]):
        if v is None or (prev is not None and t - prev > max_gap):
            if run:
                yield run
            run = []
        if v is not None:
            run.append((t, v))
        prev = t
    if run:
        yield run


def _nice_ceiling(v: float) -> float:
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _ceil_time(t: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=t.tzinfo)
    n = math.ceil((t - epoch) / step)
    return epoch + n * step
