"""The sections of the STATE page, each from its part of the ``state()`` dict.

Every value that comes from recorded data — route templates, check names and
their errors, advisory messages, countries — is escaped (:mod:`.html`); the
charts are inline SVG (:mod:`.svg`) with their numbers also given as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ..events import us_from_iso
from .html import Markup, fmt, join
from .links import performer_link, record_link, request_link, session_link
from .rows import DASH, when
from .svg import OUTCOMES, bar, duration, milliseconds, sparkline, traffic_chart
from .timefmt import absolute

if TYPE_CHECKING:
    from .pages import Page
    from .state_view import StateQuery

__all__ = [
    "advisories_panel",
    "endpoints_panel",
    "recorder_panel",
    "services_panel",
    "tiles",
    "traffic_panel",
    "who_panel",
]

_STATE_CLASS = {"up": "up", "down": "down", "maintenance": "maint", "unknown": "unknown"}
_SEVERITY_CLASS = {
    "critical": "critical",
    "high": "error",
    "medium": "warning",
    "low": "info",
    "info": "debug",
}
_DEVICES = {
    "desktop": "Desktop",
    "smartphone": "Phone",
    "tablet": "Tablet",
    "bot": "Bot",
    "": "Unknown",
}
_KINDS = (
    ("access", "ACCESS"),
    ("session", "SESSION"),
    ("audit", "AUDIT"),
    ("log", "LOG"),
    ("advisory", "ADVISORY"),
    ("check", "CHECK"),
)


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _pct(share: float | None, digits: int = 2) -> str:
    if share is None:
        return "—"
    text = f"{share * 100:.{digits}f}"
    # 99.999 % must not read as 100.00 %: a lost request or minute shows.
    if share < 1 and text == f"{100:.{digits}f}":
        text = f"{share * 100:.{digits + 2}f}"
    return f"{text} %"


def _panel(cls: str, title: str, body: Markup, aside: Markup | None = None) -> Markup:
    return fmt(
        '<section class="panel {}"><h2>{}{}</h2>{}</section>', cls, title, aside or Markup(""), body
    )


# --------------------------------------------------------------------------- traffic


def tiles(state: Mapping[str, Any]) -> Markup:
    """The window's totals: requests, error rates, denied, p50 / p95 / p99."""
    requests = state["requests"]
    rate = None if not requests else state["server_errors"] / requests
    lat = state["latency_ms"]
    items = [
        ("REQUESTS", _n(requests), "", ""),
        (
            "SERVER ERRORS",
            _n(state["server_errors"]),
            _pct(rate) if requests else "",
            "bad" if state["server_errors"] else "",
        ),
        ("CLIENT ERRORS", _n(state["client_errors"]), "", ""),
        ("DENIED", _n(state["denied"]), "", "warn" if state["denied"] else ""),
        ("P50", milliseconds(lat["p50"]), "", ""),
        ("P95", milliseconds(lat["p95"]), "", ""),
        ("P99", milliseconds(lat["p99"]), "", ""),
    ]
    return fmt(
        '<dl class="tiles">{}</dl>',
        join(
            fmt(
                '<div class="tile {}"><dt>{}</dt><dd>{}{}</dd></div>',
                cls,
                label,
                value,
                fmt(" <small>{}</small>", note) if note else Markup(""),
            )
            for label, value, note, cls in items
        ),
    )


def _legend() -> Markup:
    return fmt(
        '<ul class="legend" aria-hidden="true">{}</ul>',
        join(fmt('<li><i class="{}"></i>{}</li>', cls, label) for _k, label, cls in OUTCOMES),
    )


def _series_table(series: Sequence[Mapping[str, Any]]) -> Markup:
    """The chart's numbers as a table, for screen readers (visually hidden)."""
    rows = join(
        fmt(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            absolute(p["at"]),
            p["requests"],
            p["client_errors"],
            p["denied"],
            p["server_errors"],
        )
        for p in series
        if p["requests"]
    )
    return fmt(
        '<table class="sr-only"><caption>Requests per bucket with requests</caption>'
        "<thead><tr><th>from</th><th>requests</th><th>client errors</th><th>denied</th>"
        "<th>server errors</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


def traffic_panel(state: Mapping[str, Any], empty: str) -> Markup:
    traffic = state.get("traffic") or {}
    if not traffic.get("kept"):
        body = fmt('<p class="unrecorded">{}</p>', traffic.get("note") or "")
        return _panel("traffic", "TRAFFIC", body)
    chart = traffic_chart(state["series"], int(state["bucket"]), ident="traffic-chart", empty=empty)
    return _panel("traffic", "TRAFFIC", Markup(chart + _series_table(state["series"])), _legend())


# --------------------------------------------------------------------------- endpoints


def _sort_link(page: Page, q: StateQuery, key: str, label: str) -> Markup:
    current = q.sort == key
    return fmt(
        '<a href="{}"{}>{}{}</a>',
        page.url("/state", q.query(sort=key)),
        Markup(' aria-current="true"') if current else Markup(""),
        label,
        Markup(" &#9660;") if current else Markup(""),
    )


def endpoints_panel(
    page: Page,
    q: StateQuery,
    endpoints: Sequence[Mapping[str, Any]],
    state: Mapping[str, Any],
    now: int,
    empty: str,
) -> Markup:
    if not (state.get("traffic") or {}).get("kept"):
        return Markup("")
    period = {"from": state["from"], "to": state["to"]}
    rows = []
    for e in endpoints:
        lat = e["latency_ms"]
        access = page.url("/access", urlencode({**period, "endpoint": e["endpoint"]}))
        errors = e["server_errors"]
        rows.append(
            fmt(
                '<tr><td class="ep"><a class="endpoint" href="{}" title="ACCESS: the requests '
                'of {} in this period"><span class="method">{}</span> <code>{}</code></a></td>'
                '<td class="num">{}</td><td class="num{}">{}{}</td><td class="num{}">{}</td>'
                '<td class="num">{}</td><td class="num">{}</td><td class="num">{}</td>'
                "<td>{}</td></tr>",
                access,
                e["endpoint"],
                e["method"],
                e["route"],
                _n(e["requests"]),
                " bad" if errors else "",
                _n(errors),
                fmt(" <small>{}</small>", _pct(errors / e["requests"], 1))
                if errors and e["requests"]
                else Markup(""),
                " warn" if e["denied"] else "",
                _n(e["denied"]),
                milliseconds(lat["p50"]),
                milliseconds(lat["p95"]),
                milliseconds(lat["p99"]),
                when(e["last_seen"], now),
            )
        )
    head = fmt(
        '<thead><tr><th>ENDPOINT</th><th class="num" aria-sort="{}">{}</th>'
        '<th class="num">SERVER ERRORS</th><th class="num">DENIED</th><th class="num">P50</th>'
        '<th class="num" aria-sort="{}">{}</th><th class="num">P99</th><th>LAST SEEN</th></tr>'
        "</thead>",
        "descending" if q.sort == "requests" else "none",
        _sort_link(page, q, "requests", "REQUESTS"),
        "descending" if q.sort == "p95" else "none",
        _sort_link(page, q, "p95", "P95"),
    )
    if not rows:
        body = fmt('<tr><td class="empty" colspan="8">{}</td></tr>', empty)
    else:
        body = join(rows, "\n")
    table = fmt('<table class="rows endpoints">{}<tbody>{}</tbody></table>', head, body)
    aside = fmt(
        '<span class="hint">{} · a row opens its requests in ACCESS</span>',
        f"{len(endpoints)} method + route" if endpoints else "",
    )
    return _panel("endpoints", "ENDPOINTS", table, aside)


# --------------------------------------------------------------------------- services


def _at(iso: str) -> str:
    """``Dec 07 06:25`` (UTC)."""
    return datetime.fromtimestamp(us_from_iso(iso) / 1_000_000, tz=timezone.utc).strftime(
        "%b %d %H:%M"
    )


def _incidents(items: Sequence[Mapping[str, Any]], now: int) -> Markup:
    if not items:
        return Markup('<span class="muted">none</span>')
    lines = []
    for i in items:
        back = (
            fmt("up {}", _at(i["recovered_at"])[7:])
            if i["recovered_at"] and not i["ongoing"]
            else Markup('<strong class="bad">still down</strong>')
        )
        lines.append(
            fmt(
                '<li title="{}"><span class="bad">down</span> {} &rarr; {} <small>({})</small>'
                "</li>",
                i.get("error") or "",
                _at(i["down_at"]),
                back,
                duration(float(i["duration_s"])),
            )
        )
    return fmt('<ul class="incidents">{}</ul>', join(lines))


def services_panel(services: Sequence[Mapping[str, Any]], now: int) -> Markup:
    if not services:
        body = Markup(
            '<p class="muted">No availability checks recorded. Add one with '
            "<code>leza.availability.http(name, url)</code> (docs/availability.md).</p>"
        )
        return _panel("services", "SERVICES", body)
    rows = []
    for s in services:
        state = str(s["state"])
        up = s["uptime"]
        since = fmt("since {}", when(s["since"], now)) if s.get("since") else Markup("")
        rows.append(
            fmt(
                '<tr><td class="svc"><strong>{}</strong>{}</td><td><span class="state {}">{}'
                '</span> <small>{}</small></td><td class="num">{}</td>'
                '<td class="num">{}</td><td class="num">{}</td><td class="num">{}</td>'
                "<td>{}</td><td>{}</td></tr>",
                s["name"],
                fmt(
                    '<br><small class="err" title="{}">{}</small>', s["error"], str(s["error"])[:80]
                )
                if s.get("error")
                else Markup(""),
                _STATE_CLASS.get(state, "unknown"),
                state.upper(),
                since,
                milliseconds(s["latency_ms"]),
                _pct(up["24h"]),
                _pct(up["7d"]),
                _pct(up["30d"]),
                sparkline(s["latency_series"], f"{s['name']}"),
                _incidents(s["incidents"], now),
            )
        )
    head = Markup(
        '<thead><tr><th>SERVICE</th><th>STATE</th><th class="num">LATENCY</th>'
        '<th class="num">UPTIME 24H</th><th class="num">7D</th><th class="num">30D</th>'
        "<th>LATENCY IN PERIOD</th><th>INCIDENTS IN PERIOD</th></tr></thead>"
    )
    down = sum(1 for s in services if s["state"] == "down")
    aside = fmt(
        '<span class="hint {}">{}</span>',
        "bad" if down else "",
        f"{down} down" if down else "all up or unknown",
    )
    return _panel(
        "services",
        "SERVICES",
        fmt('<table class="rows board">{}<tbody>{}</tbody></table>', head, join(rows, "\n")),
        aside,
    )


# --------------------------------------------------------------------------- who is on


def _breakdown(title: str, items: Sequence[tuple[str, str, int]]) -> Markup:
    most = max((n for _k, _l, n in items), default=0)
    rows = join(
        fmt(
            '<tr><td title="{}">{}</td><td>{}</td><td class="num">{}</td></tr>',
            key,
            label,
            bar(n, most),
            f"{n:,}",
        )
        for key, label, n in items
    )
    if not items:
        rows = Markup('<tr><td class="muted" colspan="3">none</td></tr>')
    return fmt(
        '<table class="breakdown"><caption>{}</caption><tbody>{}</tbody></table>', title, rows
    )


def who_panel(sessions: Mapping[str, Any]) -> Markup:
    countries = [
        (c["country_code"], c["country_name"] or c["country_code"] or "Unknown", c["active"])
        for c in sessions["by_country"]
    ]
    devices = [
        (d["device_type"], _DEVICES.get(d["device_type"], d["device_type"].title()), d["active"])
        for d in sessions["by_device"]
    ]
    capped = " (at least: a bounded read)" if sessions.get("capped") else ""
    body = fmt(
        '<div class="who"><div class="big"><strong>{}</strong> active session{}{}</div>'
        '<div class="split">{}{}</div><p class="period">In this period: <strong>{}</strong> '
        "performer{} seen, <strong>{}</strong> login{}, <strong>{}</strong> failed login{}"
        "</p></div>",
        f"{sessions['active']:,}",
        "" if sessions["active"] == 1 else "s",
        capped,
        _breakdown("BY COUNTRY", countries),
        _breakdown("BY DEVICE", devices),
        _n(sessions["performers"]),
        "" if sessions["performers"] == 1 else "s",
        _n(sessions["logins"]),
        "" if sessions["logins"] == 1 else "s",
        _n(sessions["login_failures"]),
        "" if sessions["login_failures"] == 1 else "s",
    )
    return _panel("who", "WHO IS ON", body)


# --------------------------------------------------------------------------- recorder


def recorder_panel(rec: Mapping[str, Any], now: int) -> Markup:
    if rec["live"]:
        dropped = rec["dropped"] or 0
        counters = fmt(
            '<dt>WRITTEN</dt><dd>{}</dd><dt>DROPPED</dt><dd class="{}">{}</dd>'
            "<dt>PENDING</dt><dd>{}</dd><dt>SPILLED</dt><dd>{}</dd><dt>STORAGE</dt><dd>{}</dd>",
            _n(rec["written"]),
            "bad" if dropped else "",
            _n(dropped),
            _n(rec["pending"]),
            _n(rec["spilled"]),
            Markup('<strong class="bad">DOWN</strong>') if rec["storage_down"] else "reachable",
        )
        scope = "This process's recorder:"
    else:
        counters = Markup("")
        scope = (
            "This process records nothing (the command line or a dashboard on its own): "
            "each app process counts its own in stats() and /metrics."
        )
    files = rec["spill_files"]
    spill = (
        "unknown"
        if files is None
        else "none"
        if not files
        else f"{files:,} file{'s' if files != 1 else ''}, {rec['spill_bytes']:,} bytes"
    )
    newest = join(
        fmt(
            "<dt>{}</dt><dd>{}</dd>",
            label,
            when(rec["newest"].get(kind), now) if rec["newest"].get(kind) else DASH,
        )
        for kind, label in _KINDS
    )
    body = fmt(
        '<p class="muted">{}</p><dl class="facts">{}<dt>SPILL FILES WAITING</dt><dd>{}</dd>'
        '</dl><h3>NEWEST STORED</h3><dl class="facts">{}</dl>',
        scope,
        counters,
        spill,
        newest,
    )
    return _panel("recorder", "RECORDER", body)


# --------------------------------------------------------------------------- advisories


def _trace_links(base: str, a: Mapping[str, Any]) -> Markup:
    """The performer, session and request an advisory is about, each linking to its view."""
    parts = []
    if a.get("performer_id"):
        parts.append(performer_link(base, None, a["performer_id"]))
    if a.get("session_id"):
        parts.append(fmt("session {}", session_link(base, a["session_id"])))
    if a.get("request_id"):
        parts.append(fmt("request {}", request_link(base, a["request_id"])))
    return fmt(" · {}", join(parts, " · ")) if parts else Markup("")


def advisories_panel(
    page: Page, q: StateQuery, items: Sequence[Mapping[str, Any]], now: int
) -> Markup:
    link = fmt(
        '<a class="hint" href="{}">ALL IN ADVISORY &rarr;</a>',
        page.url(
            "/advisories",
            urlencode({"from": q.since, "to": q.until}) if q.since and q.until else "",
        ),
    )
    if not items:
        return _panel(
            "advisories",
            "LATEST ADVISORIES",
            Markup('<p class="muted">No advisories in this period.</p>'),
            link,
        )
    base = page.base
    rows = join(
        fmt(
            '<li><span class="badge a-{}">{}</span> <span class="msg">{}</span> '
            "<code>{}</code> {}{} {}</li>",
            _SEVERITY_CLASS.get(str(a.get("severity")), "other"),
            a.get("severity") or "-",
            a.get("message") or "",
            a.get("rule") or a.get("action") or "",
            when(a.get("timestamp"), now),
            _trace_links(base, a),
            record_link(base, a.get("_id") or a.get("id"), "DETAILS"),
        )
        for a in items
    )
    return _panel(
        "advisories", "LATEST ADVISORIES", fmt('<ol class="advisories">{}</ol>', rows), link
    )
