"""STATE's charts as inline SVG, drawn on the server.

No script, no library, nothing from another origin: each chart is markup in
the page, styled by classes of the page's own stylesheet (the view's
Content-Security-Policy allows no ``style`` attribute), with a ``<title>``
per bar or point for the pointer and the whole chart's numbers in its
``<title>``/``<desc>`` for screen readers (STATE adds the same numbers as a
table). Every text passes through :mod:`.html`'s escaping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ..events import us_from_iso
from .html import Markup, escape, fmt, join

__all__ = ["OUTCOMES", "bar", "duration", "milliseconds", "nice_max", "sparkline", "traffic_chart"]

#: Stacked from the bottom: (key in a series point, label, CSS class).
OUTCOMES = (
    ("success", "success", "o-success"),
    ("client_errors", "client errors", "o-client"),
    ("denied", "denied", "o-denied"),
    ("server_errors", "server errors", "o-server"),
)
_W, _H = 960, 210  # the traffic chart's viewBox
_LEFT, _RIGHT, _TOP, _BOTTOM = 46, 10, 12, 26


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value:
            return step * power
    return 10.0 * power  # pragma: no cover - the loop ends at 10


def _num(n: float) -> str:
    return f"{n:,.0f}" if n >= 1 or n == 0 else f"{n:g}"


def milliseconds(ms: float | None) -> str:
    """``"—"``, ``"0.42 ms"``, ``"12.4 ms"``, ``"350 ms"``, ``"2.5 s"``."""
    if ms is None:
        return "—"
    if ms >= 1000:
        return f"{ms / 1000:,.2f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3 h 20 min"``, ``"2 d 4 h"``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _when(us: int, bucket: int) -> str:
    dt = datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)
    if bucket >= 86400:
        return dt.strftime("%Y-%m-%d")
    return dt.strftime("%Y-%m-%d %H:%M")


def _tick(us: int, bucket: int, first: bool) -> str:
    dt = datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)
    if bucket >= 86400:
        return dt.strftime("%b %d")
    if first or (dt.hour == 0 and dt.minute == 0):
        return dt.strftime("%b %d %H:%M")
    return dt.strftime("%H:%M")


def _tick_every(n: int, bucket: int) -> int:
    """Buckets between two x-axis labels: a round step giving at most ~8 labels."""
    steps = {60: (5, 10, 15, 30, 60, 120), 3600: (1, 2, 3, 6, 12, 24)}.get(
        bucket, (1, 2, 7, 14, 30, 61, 91)
    )
    for step in steps:
        if n / step <= 8:
            return step
    return max(1, n // 8)


def _bucket_label(bucket: int) -> str:
    return {60: "minute", 3600: "hour", 86400: "day"}.get(bucket, f"{bucket} s")


def traffic_chart(
    series: Sequence[Mapping[str, Any]], bucket: int, *, ident: str, empty: str
) -> Markup:
    """Requests per bucket as stacked bars by outcome, with a y axis, time labels
    and a ``<title>`` per bar; ``empty`` is written across a chart with no request."""
    points = []
    for p in series:
        total = int(p.get("requests") or 0)
        parts = {k: int(p.get(k) or 0) for k, _label, _cls in OUTCOMES[1:]}
        parts["success"] = max(0, total - sum(parts.values()))
        points.append((us_from_iso(str(p["at"])), total, parts))
    n = max(1, len(points))
    top = nice_max(max((t for _at, t, _parts in points), default=0))
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    step = plot_w / n
    gap = min(2.0, step * 0.18)
    grid = []
    for i in range(5):
        value = top * i / 4
        y = _TOP + plot_h - plot_h * i / 4
        grid.append(
            Markup(
                f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" '
                f'y2="{y:.1f}"/><text class="axis" x="{_LEFT - 6}" y="{y + 4:.1f}" '
                f'text-anchor="end">{_num(value)}</text>'
            )
        )
    every = _tick_every(n, bucket)
    bars, ticks = [], []
    total_requests = 0
    for i, (at, total, parts) in enumerate(points):
        total_requests += total
        x = _LEFT + i * step
        if i % every == 0 and x < _W - _RIGHT - 60:  # a label near the edge would be cut
            ticks.append(
                Markup(
                    f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP + plot_h}" '
                    f'y2="{_TOP + plot_h + 4}"/><text class="axis" x="{x + 1:.1f}" '
                    f'y="{_H - 8}">{escape(_tick(at, bucket, i == 0))}</text>'
                )
            )
        if not total:
            continue
        y = _TOP + plot_h
        rects = []
        for key, _label, cls in OUTCOMES:
            h = plot_h * parts[key] / top
            if h <= 0:
                continue
            y -= h
            rects.append(
                Markup(
                    f'<rect class="{cls}" x="{x + gap / 2:.2f}" y="{y:.2f}" '
                    f'width="{max(step - gap, 0.6):.2f}" height="{max(h, 0.6):.2f}"/>'
                )
            )
        detail = ", ".join(f"{_num(parts[k])} {label}" for k, label, _c in OUTCOMES if parts[k])
        bars.append(
            fmt(
                "<g><title>{} UTC: {} request{} ({})</title>{}</g>",
                _when(at, bucket),
                _num(total),
                "" if total == 1 else "s",
                detail,
                join(rects),
            )
        )
    title = f"Requests per {_bucket_label(bucket)}, by outcome"
    busiest = max((t for _a, t, _p in points), default=0)
    desc = (
        f"{_num(total_requests)} requests in {len(points)} {_bucket_label(bucket)}s; "
        f"the busiest {_bucket_label(bucket)} had {_num(busiest)}"
    )
    note = (
        fmt(
            '<text class="empty" x="{}" y="{}" text-anchor="middle">{}</text>',
            f"{_LEFT + plot_w / 2:.0f}",
            f"{_TOP + plot_h / 2:.0f}",
            empty,
        )
        if total_requests == 0
        else Markup("")
    )
    return fmt(
        '<svg class="chart" viewBox="0 0 {} {}" width="100%" role="img" '
        'aria-labelledby="{}-t {}-d"><title id="{}-t">{}</title><desc id="{}-d">{}</desc>'
        "{}{}{}{}</svg>",
        _W,
        _H,
        ident,
        ident,
        ident,
        title,
        ident,
        desc,
        join(grid),
        join(ticks),
        join(bars),
        note,
    )


def sparkline(points: Sequence[Mapping[str, Any]], label: str) -> Markup:
    """A check's latency over the window: a line through the slots' mean latency
    (broken where no probe ran), a red mark under slots with a failed probe."""
    w, h, pad = 160, 30, 3
    values = [p.get("latency_ms") for p in points]
    known = [float(v) for v in values if isinstance(v, (int, float))]
    n = max(1, len(points))
    if not known:
        return fmt(
            '<svg class="spark" viewBox="0 0 {} {}" width="{}" height="{}" role="img" '
            'aria-label="{}: no probe in this period"><line class="grid" x1="0" x2="{}" '
            'y1="{}" y2="{}"/></svg>',
            w,
            h,
            w,
            h,
            label,
            w,
            h - pad,
            h - pad,
        )
    top = max(known) or 1.0
    dx = w / n

    def y(v: float) -> float:
        return h - pad - (h - 2 * pad - 4) * v / top

    lines, run, marks = [], [], []
    for i, p in enumerate(points):
        v = p.get("latency_ms")
        x = dx * i + dx / 2
        if isinstance(v, (int, float)):
            run.append(f"{x:.1f},{y(float(v)):.1f}")
        elif run:
            lines.append(run)
            run = []
        if p.get("ok") is False:
            marks.append(
                Markup(
                    f'<rect class="fail" x="{dx * i:.1f}" y="{h - 3}" '
                    f'width="{max(dx, 1.5):.1f}" height="3"/>'
                )
            )
    if run:
        lines.append(run)
    drawn = join(
        fmt('<polyline class="line" points="{}"/>', " ".join(r))
        if len(r) > 1
        else fmt('<circle class="dot" cx="{}" cy="{}" r="1.6"/>', *r[0].split(","))
        for r in lines
    )
    text = (
        f"{label}: latency {milliseconds(min(known))} to {milliseconds(max(known))}, "
        f"mean {milliseconds(sum(known) / len(known))}"
        + (f"; failed probes in {len(marks)} of {n} slots" if marks else "")
    )
    return fmt(
        '<svg class="spark" viewBox="0 0 {} {}" width="{}" height="{}" role="img" '
        'aria-label="{}"><title>{}</title>{}{}</svg>',
        w,
        h,
        w,
        h,
        text,
        text,
        drawn,
        join(marks),
    )


def bar(value: int, most: int) -> Markup:
    """A small horizontal bar for a share of ``most`` (decoration: the number is text)."""
    width = 0.0 if most <= 0 else 100.0 * value / most
    return Markup(
        '<svg class="minibar" viewBox="0 0 100 8" width="100" height="8" aria-hidden="true">'
        '<rect class="track" x="0" y="0" width="100" height="8" rx="2"/>'
        f'<rect class="fill" x="0" y="0" width="{max(width, 1.5 if value else 0):.1f}" '
        'height="8" rx="2"/></svg>'
    )
