"""The STATE tab (``<mount>/state``, the landing page) and ``<mount>/api/state``.

Both read ``leza.query.state()`` for the window the query asks for; the JSON is
that dict as it is, the page shows the same numbers. Inputs, parsed strictly
(:mod:`.inputs`; a bad one is a 400 naming it):

* ``from``, ``to``: ISO 8601 dates or date-times, inclusive (a date ``to`` is
  its whole day); either may be left out: the window is the 24 hours up to
  ``to`` (itself now by default). ``from`` after ``to``, or a window over 400
  days, is a 400 naming ``from``;
* ``last``: ``1h``, ``6h``, ``24h``, ``7d`` or ``30d``: the period ending now
  (the quick links), used when neither ``from`` nor ``to`` is given;
* ``sort``: the endpoints by ``requests`` (the default) or by ``p95``;
* ``refresh``: reload the page every ``30``, ``60`` or ``300`` seconds (a
  ``<meta http-equiv="refresh">``, so it needs no script); ``0`` or empty: never.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ..query import time_us
from ..state.build import WindowError, build_state, state_window
from .html import Markup, fmt, join, render
from .inputs import BadInput, Params, iso_time
from .responses import DashResponse, html_response, json_response
from .state_sections import (
    advisories_panel,
    endpoints_panel,
    recorder_panel,
    services_panel,
    tiles,
    traffic_panel,
    who_panel,
)
from .tabs import STATE

if TYPE_CHECKING:
    from .core import Dashboard, DashRequest
    from .pages import Page

__all__ = ["LAST", "REFRESH", "SORTS", "StateQuery", "answer_state", "state_page"]

#: The quick periods (``last``) and their length.
LAST = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
SORTS = ("requests", "p95")
#: Auto-refresh choices (seconds; 0: off) and their labels.
REFRESH = {0: "OFF", 30: "30 S", 60: "1 MIN", 300: "5 MIN"}


@dataclass(frozen=True)
class StateQuery:
    """The STATE view's inputs as given (to write them back into links) and the window."""

    since: str  # "from" as given ("" when left out)
    until: str
    last: str  # "" unless a quick period is in force
    sort: str
    refresh: int
    since_us: int
    until_us: int

    @classmethod
    def parse(cls, params: Params, now: int) -> StateQuery:
        since = params.get("from").strip()
        until = params.get("to").strip()
        since_us = iso_time("from", since) if since else None
        until_us = iso_time("to", until, end=True) if until else None
        last = params.get("last").strip()
        if last and last not in LAST:
            raise BadInput("last", f"last: one of {', '.join(LAST)}")
        if since or until:
            last = ""  # an explicit period wins over the quick one
        elif last:
            since_us = now - int(LAST[last].total_seconds() * 1_000_000)
        sort = params.get("sort").strip() or "requests"
        if sort not in SORTS:
            raise BadInput("sort", "sort: requests or p95")
        text = params.get("refresh").strip() or "0"
        if text not in {str(s) for s in REFRESH}:
            raise BadInput("refresh", "refresh: 0 (off), 30, 60 or 300 seconds")
        try:
            start, end = state_window(since_us, until_us, now)
        except WindowError as exc:
            raise BadInput(exc.field, f"{exc.field}: {exc}") from None
        return cls(since, until, last, sort, int(text), start, end)

    def query(self, **changes: str | int) -> str:
        """The URL query of these inputs (empty and default values left out)."""
        values: dict[str, str | int] = {
            "from": self.since,
            "to": self.until,
            "last": self.last,
            "sort": "" if self.sort == "requests" else self.sort,
            "refresh": self.refresh or "",
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v not in ("", 0)})

    @property
    def period(self) -> str:
        if self.last:
            return f"Last {self.last}"
        if not self.since and not self.until:
            return "Last 24h"
        return "Period"


def answer_state(dashboard: Dashboard, req: DashRequest, api: bool) -> DashResponse:
    """``GET /state`` and ``GET /api/state``."""
    now = time_us()
    q = StateQuery.parse(req.query, now)
    leza = dashboard.leza
    leza.query.ensure_ready()
    state = build_state(leza.storage, q.since_us, q.until_us, now=now, live=leza.query.live)
    if api:
        if q.sort == "p95":
            state["endpoints"] = sort_endpoints(state["endpoints"], "p95")
        return json_response(state)
    return html_response(state_page(dashboard.page(req), q, state))


def sort_endpoints(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """By requests (most first; the order ``state()`` gives) or by p95 (slowest first)."""
    if sort != "p95":
        return rows
    return sorted(
        rows, key=lambda e: (-(e["latency_ms"]["p95"] or 0.0), -e["requests"], e["endpoint"])
    )


def _ranges(page: Page, q: StateQuery) -> Markup:
    links = []
    for key in LAST:
        current = q.last == key or (key == "24h" and not (q.last or q.since or q.until))
        links.append(
            fmt(
                '<a href="{}"{}>{}</a>',
                page.url("/state", q.query(**{"from": "", "to": "", "last": key})),
                Markup(' aria-current="true"') if current else Markup(""),
                key.upper(),
            )
        )
    return join(links)


def state_page(page: Page, q: StateQuery, state: dict[str, Any]) -> Markup:
    """The whole STATE page."""
    now = page.now_us
    endpoints = sort_endpoints(state["endpoints"], q.sort)
    recorded = state["recorder"]["newest"].get("access") is not None
    empty = "No requests in this period." if recorded else "No traffic recorded yet."
    refresh_options = join(
        fmt(
            '<option value="{}"{}>{}</option>',
            s,
            Markup(" selected") if s == q.refresh else Markup(""),
            label,
        )
        for s, label in REFRESH.items()
    )
    body = render(
        "state.html",
        refresh_meta=fmt('<meta http-equiv="refresh" content="{}">', q.refresh)
        if q.refresh
        else Markup(""),
        form_action=page.url("/state"),
        **{"from": q.since, "to": q.until},
        last=q.last,
        sort="" if q.sort == "requests" else q.sort,
        refresh_options=refresh_options,
        ranges=_ranges(page, q),
        reset=page.url("/state"),
        refresh_now=page.url("/state", q.query()),
        window=fmt(
            "{}: <strong>{}</strong> to <strong>{}</strong> UTC",
            q.period,
            _short(state["from"]),
            _short(state["to"]),
        ),
        updated=time.strftime("%H:%M:%S", time.gmtime(now / 1_000_000)),
        tiles=tiles(state),
        traffic=traffic_panel(state, empty),
        services=services_panel(state["services"], now),
        who=who_panel(state["sessions"]),
        endpoints=endpoints_panel(page, q, endpoints, state, now, empty),
        recorder=recorder_panel(state["recorder"], now),
        advisories=advisories_panel(page, q, state["advisories"], now),
        api=page.url("/api/state", q.query(refresh="")),
    )
    carry = urlencode({"from": q.since, "to": q.until}) if q.since and q.until else ""
    return page.layout("STATE", STATE, None, body, carry=carry)


def _short(iso: str) -> str:
    """``2025-07-06 15:49`` of an ISO time (the minute is what a window shows)."""
    return iso[:16].replace("T", " ")
