"""The table of each tab, from the records' ``to_dict()`` forms.

Every value goes through :mod:`.html`'s escaping; only the markup written
here is trusted. Missing or odd values (a record written by an older
version, an invalid IP) render as a dash, never as an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .cards import card
from .html import Markup, fmt, join
from .links import entity_link, performer_link, request_link, session_link
from .timefmt import absolute, relative

__all__ = [
    "DASH",
    "access_table",
    "advisory_table",
    "audit_table",
    "badge",
    "diff_cell",
    "generic_table",
    "log_table",
    "more",
    "session_table",
    "status_cell",
    "table",
    "when",
]

DASH = Markup("&mdash;")
_KNOWN_ACTIONS = frozenset(
    {"access", "denied", "login", "logout", "login_failed", "revoke", "create", "update",
     "delete", "bulk_update", "bulk_delete", "debug", "info", "warning", "error", "critical"}
)  # fmt: skip
_SHORT = 120  # characters of a value shown in a diff before it is cut (all of it on hover)


def table(cls: str, heads: Sequence[str], rows: Sequence[Markup], empty: str) -> Markup:
    """A ``rows`` table (every tab's and view's); ``empty`` says why there are none."""
    head = join(fmt("<th>{}</th>", h) for h in heads)
    if not rows:
        body = fmt('<tr><td class="empty" colspan="{}">{}</td></tr>', len(heads), empty)
    else:
        body = join(rows, "\n")
    return fmt(
        '<table class="rows {}">\n<thead><tr>{}</tr></thead>\n<tbody>\n{}\n</tbody>\n</table>',
        cls,
        head,
        body,
    )


def when(iso: str | None, now_us: int) -> Markup:
    if not iso:
        return DASH
    return fmt(
        '<time class="rel" datetime="{}" title="{}">{}</time>',
        iso,
        absolute(iso),
        relative(iso, now_us),
    )


def badge(action: object) -> Markup:
    text = "" if action is None else str(action)
    cls = text if text in _KNOWN_ACTIONS else "other"
    return fmt('<span class="badge a-{}">{}</span>', cls, text or "-")


def status_cell(status: object) -> Markup:
    if not isinstance(status, int):
        return DASH
    return fmt('<span class="status s{}">{}</span>', min(max(status // 100, 1), 5), status)


def performer_cell(base: str, performer: Mapping[str, Any] | None) -> Markup:
    """The performer's name, linking to their view."""
    return performer_link(base, performer)


def location_cell(geo: Mapping[str, Any] | None, ip: str, ip_valid: bool = True) -> Markup:
    hover = ip if ip_valid else f"{ip} (invalid, not located)"
    if not geo:
        return fmt('<span class="muted" title="{}">{}</span>', hover, "unknown")
    place = ", ".join(
        str(x) for x in (geo.get("city"), geo.get("country_name") or geo.get("country_code")) if x
    )
    return fmt('<span title="{}">{}</span>', hover, place or "unknown")


def device_cell(item: Mapping[str, Any]) -> Markup:
    ua = str(item.get("user_agent") or "")
    bot = item.get("bot")
    if bot:
        text = f"bot: {bot.get('name') or 'unknown'}"
    else:
        browser = item.get("browser") or {}
        os_ = item.get("os") or {}
        device = item.get("device") or {}
        parts = [
            " ".join(x for x in (browser.get("name"), browser.get("version")) if x),
            " ".join(x for x in (os_.get("name"), os_.get("version")) if x),
            device.get("type") or "",
        ]
        text = " · ".join(p for p in parts if p)
    if not text:
        return fmt('<span class="muted" title="{}">{}</span>', ua, "unknown")
    return fmt('<span title="{}">{}</span>', ua, text)


def more(base: str, item: Mapping[str, Any]) -> Markup:
    """MORE DETAILS: the record's card (cards.py), the raw JSON one click further."""
    return card(base, item, diff_cell)


def _code(value: object) -> Markup:
    return fmt("<code>{}</code>", value)


# --------------------------------------------------------------------------- ACCESS


def _endpoint(base: str, e: Mapping[str, Any]) -> Markup:
    """The endpoint (route on hover), linking to its request's view."""
    text = fmt('<code title="{}">{}</code>', e.get("route") or "", e.get("endpoint") or "")
    return request_link(base, e.get("request_id"), text)


def access_table(
    base: str, items: Sequence[Mapping[str, Any]], now_us: int, empty: str = ""
) -> Markup:
    heads = (
        "TIME",
        "ACTION",
        "ENDPOINT",
        "TYPE",
        "REASON",
        "STATUS",
        "PERFORMER",
        "LOCATION",
        "DEVICE",
        "",
    )
    rows = [
        fmt(
            '<tr><td>{}</td><td>{}</td><td class="endpoint">{}</td><td>{}</td>'
            '<td class="reason">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
            "<td>{}</td></tr>",
            when(e.get("timestamp"), now_us),
            badge(e.get("action")),
            _endpoint(base, e),
            e.get("endpoint_type") or "",
            e.get("reason") or "",
            status_cell(e.get("status")),
            performer_cell(base, e.get("performer")),
            location_cell(
                e.get("geoLocationInfoOfIp"), str(e.get("ip") or ""), bool(e.get("ip_valid", True))
            ),
            device_cell(e),
            more(base, e),
        )
        for e in items
    ]
    return table("access", heads, rows, empty or "No requests in this period.")


# --------------------------------------------------------------------------- SESSION


def session_table(
    base: str,
    items: Sequence[Mapping[str, Any]],
    now_us: int,
    revoke_form: Callable[[Mapping[str, Any]], Markup],
    empty: str = "",
    cards: bool = True,
) -> Markup:
    """``cards=False``: no MORE DETAILS (the session's id links to its view, which
    shows the card): a performer's view lists many sessions."""
    heads = (
        "STATE",
        "SESSION",
        "PERFORMER",
        "DEVICE",
        "LOCATION",
        "IP",
        "MACHINE ID",
        "STARTED",
        "LAST SEEN",
        "",
        "",
    )
    rows = []
    for s in items:
        if s.get("active"):
            state = Markup('<span class="badge a-active">active</span>')
        else:
            state = fmt(
                '<span class="badge a-ended" title="ended {}">ended</span> <small>{}</small>',
                absolute(s.get("ended_at")),
                s.get("end_reason") or "",
            )
        machine = str(s.get("machine_identifier") or "")
        rows.append(
            fmt(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                state,
                session_link(base, s.get("_id")),
                performer_cell(base, s.get("performer")),
                device_cell(s),
                location_cell(s.get("geoLocationInfoOfIp"), str(s.get("ip") or "")),
                _code(s.get("ip") or ""),
                fmt('<code title="{}">{}</code>', machine, machine[:12]) if machine else DASH,
                when(s.get("session_start"), now_us),
                when(s.get("last_seen"), now_us),
                more(base, s) if cards else Markup(""),
                revoke_form(s) if s.get("active") else Markup(""),
            )
        )
    return table("sessions", heads, rows, empty or "No sessions started in this period.")


# --------------------------------------------------------------------------- AUDIT


def _short(value: object) -> Markup:
    if value is None:
        return Markup('<span class="muted">none</span>')
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= _SHORT:
        return fmt("<code>{}</code>", text)
    return fmt('<code title="{}">{}…</code>', text, text[:_SHORT])


def _ids(values: object) -> Markup:
    if not isinstance(values, list) or not values:
        return Markup('<span class="muted">none</span>')
    return join((_short(v) for v in values), ", ")


def diff_cell(diff: Mapping[str, Any] | None) -> Markup:
    """``field: before → after``; many-to-many changes as added / removed lists;
    a bulk statement as its criteria, values and rows."""
    if not diff:
        return DASH
    lines = []
    for field, change in diff.items():
        if field == "statement" and isinstance(change, Mapping):
            values = change.get("values")
            parts = [fmt("{} rows", change.get("rows", "?"))]
            if change.get("criteria"):
                parts.append(fmt("where {}", _short(change["criteria"])))
            if isinstance(values, Mapping) and values:
                parts.append(
                    fmt(
                        "set {}",
                        join((fmt("{} = {}", k, _short(v)) for k, v in values.items()), ", "),
                    )
                )
            if "ids" in change:
                parts.append(fmt("ids {}", _ids(change.get("ids"))))
            lines.append(fmt('<li class="bulk"><b>statement</b>: {}</li>', join(parts, "; ")))
        elif (
            isinstance(change, Mapping)
            and ({"added", "removed"} & change.keys())
            and not ({"before", "after"} & change.keys())
        ):
            lines.append(
                fmt(
                    '<li><b>{}</b>: <span class="added">+ {}</span> '
                    '<span class="removed">&minus; {}</span></li>',
                    field,
                    _ids(change.get("added")),
                    _ids(change.get("removed")),
                )
            )
        elif isinstance(change, Mapping) and {"before", "after"} & change.keys():
            lines.append(
                fmt(
                    "<li><b>{}</b>: {} &rarr; {}</li>",
                    field,
                    _short(change.get("before")),
                    _short(change.get("after")),
                )
            )
        else:
            lines.append(fmt("<li><b>{}</b>: {}</li>", field, _short(change)))
    return fmt('<ul class="diff">{}</ul>', join(lines))


def audit_table(
    base: str, items: Sequence[Mapping[str, Any]], now_us: int, empty: str = ""
) -> Markup:
    heads = ("TIME", "ACTOR", "ACTION", "ENTITY", "CHANGES", "REASON", "")
    rows = [
        fmt(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td></tr>",
            when(a.get("timestamp"), now_us),
            performer_cell(base, a.get("actor")),
            badge(a.get("action")),
            entity_link(base, a.get("entity_type"), a.get("entity_id")),
            diff_cell(a.get("diff")),
            a.get("reason") or "",
            more(base, a),
        )
        for a in items
    ]
    return table("audit", heads, rows, empty or "No changes recorded in this period.")


# --------------------------------------------------------------------------- ADVISORY, LOG

_SEVERITY_CLASS = {"critical": "critical", "high": "error", "medium": "warning", "low": "info",
                   "info": "debug"}  # fmt: skip


def _performer_id(base: str, e: Mapping[str, Any]) -> Markup:
    performer = e.get("performer")
    if isinstance(performer, Mapping):
        return performer_cell(base, performer)
    return performer_link(base, None, e.get("performer_id"))


def advisory_table(
    base: str, items: Sequence[Mapping[str, Any]], now_us: int, empty: str = ""
) -> Markup:
    heads = ("TIME", "SEVERITY", "RULE", "ADVISORY", "PERFORMER", "IP", "EVIDENCE", "")
    rows = []
    for e in items:
        severity = str(e.get("severity") or "")
        evidence = e.get("evidence")
        rows.append(
            fmt(
                '<tr><td>{}</td><td>{}</td><td>{}</td><td class="reason">{}</td><td>{}</td>'
                "<td>{}</td><td>{}</td><td>{}</td></tr>",
                when(e.get("timestamp"), now_us),
                fmt(
                    '<span class="badge a-{}">{}</span>',
                    _SEVERITY_CLASS.get(severity, "other"),
                    severity or "-",
                ),
                _code(e.get("rule") or e.get("action") or ""),
                e.get("message") or "",
                _performer_id(base, e),
                _code(e.get("ip") or "") if e.get("ip") else DASH,
                fmt("{} event{}", len(evidence), "" if len(evidence) == 1 else "s")
                if isinstance(evidence, list)
                else DASH,
                more(base, e),
            )
        )
    return table("advisories", heads, rows, empty or "No advisories in this period.")


def log_table(
    base: str, items: Sequence[Mapping[str, Any]], now_us: int, empty: str = ""
) -> Markup:
    heads = ("TIME", "LEVEL", "LOGGER", "MESSAGE", "ROUTE", "PERFORMER", "REQUEST ID", "")
    rows = []
    for e in items:
        message = fmt("{}", e.get("message") or "")
        if e.get("exception"):
            message = fmt('{} <span class="badge a-error" title="{}">exception</span>',
                          message, str(e["exception"])[-_SHORT * 4 :])  # fmt: skip
        rows.append(
            fmt(
                '<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class="reason">{}</td>'
                "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                when(e.get("timestamp"), now_us),
                badge(e.get("action")),
                e.get("logger") or "",
                message,
                _code(e.get("route")) if e.get("route") else DASH,
                _performer_id(base, e),
                request_link(base, e.get("request_id")) if e.get("request_id") else DASH,
                more(base, e),
            )
        )
    return table("logs", heads, rows, empty or "No log records in this period.")


#: Where a record of a kind this module does not know says what it is about.
_SUMMARY_KEYS = ("message", "summary", "title", "detail", "reason", "rule")


def generic_table(base: str, items: Sequence[Mapping[str, Any]], now_us: int, noun: str) -> Markup:
    """Rows of a kind without a table of its own, by their common fields."""
    heads = ("TIME", "ACTION", "SUMMARY", "PERFORMER", "REQUEST ID", "")
    rows = []
    for e in items:
        summary = next((e[k] for k in _SUMMARY_KEYS if e.get(k)), "")
        rows.append(
            fmt(
                '<tr><td>{}</td><td>{}</td><td class="reason">{}</td><td>{}</td>'
                "<td>{}</td><td>{}</td></tr>",
                when(e.get("timestamp"), now_us),
                badge(e.get("action")),
                summary if isinstance(summary, str) else json.dumps(summary, default=str),
                _performer_id(base, e),
                request_link(base, e.get("request_id")) if e.get("request_id") else DASH,
                more(base, e),
            )
        )
    return table("generic", heads, rows, f"No {noun} in this period.")
