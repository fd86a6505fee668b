"""STATE's "who is on": active sessions now, by country and device type, and the
distinct performers of the sessions seen in a window.

SQL answers with ``GROUP BY`` and ``COUNT(DISTINCT)`` over the session table
(:func:`leza_middleware.storage.sql_state.session_summary`): its cost follows
the number of sessions, never the number of requests. Other backends are read
through the query API, bounded: the newest :data:`MAX_SESSIONS` active
sessions, and the newest :data:`MAX_SESSIONS` sessions started by the end of
the window (``capped`` says when a bound was reached, so the counts are lower
bounds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from ..events import SessionRecord
from ..storage.base import QueryFilter, Storage

__all__ = ["MAX_SESSIONS", "who_is_on"]

#: Most sessions a backend without the SQL path reads for each count.
MAX_SESSIONS = 10_000


def _sessions(storage: Storage, flt: QueryFilter) -> Iterator[SessionRecord]:
    cursor: tuple[int, str] | None = None
    left = MAX_SESSIONS
    while left > 0:
        page = storage.query(
            "session",
            QueryFilter(until=flt.until, active=flt.active, limit=min(5000, left), cursor=cursor),
        )
        for r in page.events:
            if isinstance(r, SessionRecord):
                yield r
        left -= len(page.events)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _generic(storage: Storage, since: int, until: int) -> tuple[dict[str, Any], bool]:
    countries: Counter[tuple[str, str]] = Counter()
    devices: Counter[str] = Counter()
    n_active = 0
    for r in _sessions(storage, QueryFilter(active=True)):
        n_active += 1
        geo = r.geo
        countries[("", "") if geo is None else (geo.country_code, geo.country_name)] += 1
        devices["" if r.device is None else r.device.device_type] += 1
    seen: set[str] = set()
    n_read = 0
    for r in _sessions(storage, QueryFilter(until=until)):
        n_read += 1
        if r.performer_id is not None and r.last_seen >= since:
            seen.add(r.performer_id)
    capped = n_active >= MAX_SESSIONS or n_read >= MAX_SESSIONS
    summary = {
        "countries": [(code, name, n) for (code, name), n in countries.items()],
        "devices": list(devices.items()),
        "performers": len(seen),
    }
    return summary, capped


def who_is_on(storage: Storage, since: int, until: int) -> dict[str, Any]:
    """``{"active", "by_country", "by_device", "performers", "capped"}``: lists most
    first, ``""`` for an unknown country or device type."""
    if not storage.stores("session"):
        summary: dict[str, Any] = {"countries": [], "devices": [], "performers": 0}
        capped = False
    else:
        from ..storage import backend_of, is_sql

        sessions = backend_of(storage, "session")
        if is_sql(sessions):
            from ..storage.sql_state import session_summary

            summary, capped = session_summary(sessions, since, until), False
        else:
            summary, capped = _generic(storage, since, until)
    by_country: dict[str, list[Any]] = {}
    for code, name, n in summary["countries"]:
        entry = by_country.setdefault(code, [name, 0])
        entry[0] = entry[0] or name
        entry[1] += n
    countries = sorted(by_country.items(), key=lambda kv: (-kv[1][1], kv[0]))
    merged: Counter[str] = Counter()
    for kind, n in summary["devices"]:
        merged[kind] += n
    devices = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "active": sum(n for _code, (_name, n) in countries),
        "by_country": [
            {"country_code": code, "country_name": name, "active": n}
            for code, (name, n) in countries
        ],
        "by_device": [{"device_type": kind, "active": n} for kind, n in devices],
        "performers": summary["performers"],
        "capped": capped,
    }
