"""Times as the dashboard shows them: "4 HOURS AGO", with the exact UTC time on hover.

``templates/dashboard.js`` repeats :func:`relative` so open pages stay current;
keep the two in step.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ..events import us_from_iso

__all__ = ["absolute", "relative"]

_UNITS = (
    (365 * 86400, "YEAR"),
    (30 * 86400, "MONTH"),
    (7 * 86400, "WEEK"),
    (86400, "DAY"),
    (3600, "HOUR"),
    (60, "MINUTE"),
)


def relative(iso: str | None, now_us: int) -> str:
    """``"4 HOURS AGO"``, ``"JUST NOW"``, ``"IN 2 MINUTES"`` (a clock ahead of ours)."""
    if not iso:
        return ""
    try:
        delta = (now_us - us_from_iso(iso)) // 1_000_000
    except ValueError:
        return iso
    ahead = delta < 0
    seconds = abs(delta)
    for size, unit in _UNITS:
        if seconds >= size:
            n = seconds // size
            text = f"{n} {unit}{'S' if n != 1 else ''}"
            return f"IN {text}" if ahead else f"{text} AGO"
    return "JUST NOW"


def absolute(iso: str | None) -> str:
    """``"2025-07-06 15:49:24 UTC"``."""
    if not iso:
        return ""
    try:
        dt = datetime.fromtimestamp(us_from_iso(iso) / 1_000_000, tz=timezone.utc)
    except ValueError:
        return iso
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")
