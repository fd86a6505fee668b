"""Times as the dashboard shows them: "4 HOURS AGO", with the exact UTC time on hover.

``templates/dashboard.js`` repeats :func:`relative` so open pages stay current;
keep the two in step.
"""

from __future__ import annotations

import re
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


#: The UTC times the records give (``…T15:49:24.062093Z``, sessions' ``….062Z``).
_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")


def absolute(iso: str | None) -> str:
    """``"2025-07-06 15:49:24 UTC"``."""
    if not iso:
        return ""
    if _UTC.fullmatch(iso):  # the records' own form: no date arithmetic needed
        return f"{iso[:10]} {iso[11:19]} UTC"
    try:
        dt = datetime.fromtimestamp(us_from_iso(iso) / 1_000_000, tz=timezone.utc)
    except ValueError:
        return iso
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")
