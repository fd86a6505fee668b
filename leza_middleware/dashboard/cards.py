"""MORE DETAILS: a readable card per kind of record, the raw JSON one click further.

A card is a ``<details>`` element (it opens without JavaScript, and the
view's Content-Security-Policy allows no inline script anyway). It says what
an auditor asks of each kind — a request: outcome and reason, endpoint and
route, timing, client IP with the proxy chain, location, device, performer,
session, machine id; a change: the field diff; a log record: the message and
the exception; an advisory: its evidence — with every id linked to its view,
a permalink, and the record as stored in a nested ``<details>``.

Every value is escaped (:mod:`.html`); a missing or odd value renders as a
dash, never as an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .html import Markup, escape, fmt, join
from .links import entity_link, performer_link, record_link, request_link, session_link
from .timefmt import absolute

__all__ = ["card", "raw_json"]

DASH = Markup("&mdash;")
_Field = tuple[str, Markup]


def raw_json(item: Mapping[str, Any], label: str = "RAW JSON") -> Markup:
    """The record as stored: escaped JSON in its own ``<details>``.

    One line, wrapped by the page: without ``indent`` the encoder runs in C, and
    a view of a hundred records renders several times faster (the card above
    it is the readable form)."""
    text = json.dumps(item, ensure_ascii=False, separators=(", ", ": "), default=str)
    return fmt('<details class="raw"><summary>{}</summary><pre>{}</pre></details>', label, text)


def _text(value: object) -> Markup:
    if value is None or value == "" or value == []:
        return DASH
    return fmt("{}", value)


def _code(value: object) -> Markup:
    if value is None or value == "":
        return DASH
    return fmt("<code>{}</code>", value)


def _when(iso: object) -> Markup:
    if not isinstance(iso, str) or not iso:
        return DASH
    return fmt('<time datetime="{}">{}</time>', iso, absolute(iso))


def _fields(rows: Sequence[_Field]) -> Markup:
    # The names are this module's literals and the values Markup already: joined
    # as they are (a card is rendered per row of a page: this is its hot loop).
    return Markup(
        '<dl class="fields">'
        + "".join(f"<dt>{name}</dt><dd>{escape(value)}</dd>" for name, value in rows)
        + "</dl>"
    )


def location_text(geo: Mapping[str, Any] | None) -> str:
    if not geo:
        return ""
    return ", ".join(
        str(x)
        for x in (
            geo.get("city"),
            geo.get("region_name"),
            geo.get("country_name") or geo.get("country_code"),
        )
        if x
    )


def device_text(item: Mapping[str, Any]) -> str:
    bot = item.get("bot")
    if bot:
        return f"bot: {bot.get('name') or 'unknown'}"
    browser = item.get("browser") or {}
    os_ = item.get("os") or {}
    device = item.get("device") or {}
    parts = [
        " ".join(str(x) for x in (browser.get("name"), browser.get("version")) if x),
        " ".join(str(x) for x in (os_.get("name"), os_.get("version")) if x),
        str(device.get("type") or ""),
    ]
    return " · ".join(p for p in parts if p)


def _ip(item: Mapping[str, Any]) -> Markup:
    ip = item.get("ip")
    if not ip:
        return DASH
    if item.get("ip_valid", True) is False:
        return fmt('<code>{}</code> <span class="badge a-denied">invalid, not located</span>', ip)
    return _code(ip)


def _access(base: str, e: Mapping[str, Any]) -> list[_Field]:
    chain = e.get("proxy_chain") or []
    peer = e.get("peer_ip")
    hops = fmt(
        "peer {}{}",
        _code(peer),
        fmt(" · chain {}", join((_code(h) for h in chain), " &rarr; ")) if chain else "",
    )
    geo = e.get("geoLocationInfoOfIp") or {}
    duration = e.get("duration_ms")
    rows: list[_Field] = [
        ("OUTCOME", fmt("<b>{}</b> · {}", e.get("outcome") or "", _text(e.get("reason")))),
        ("STATUS", _code(e.get("status"))),
        ("ENDPOINT", fmt("{} {}", e.get("endpoint_type") or "", _code(e.get("endpoint")))),
        ("ROUTE", _code(e.get("route"))),
        (
            "WHEN",
            fmt(
                "{} · {}",
                _when(e.get("timestamp")),
                f"{duration:g} ms" if isinstance(duration, (int, float)) else "",
            ),
        ),
        ("CLIENT IP", _ip(e)),
        ("PROXIES", hops),
        (
            "LOCATION",
            _text(location_text(geo)) if geo else Markup('<span class="muted">unknown</span>'),
        ),
        (
            "DEVICE",
            fmt("{}<br><small>{}</small>", _text(device_text(e)), e.get("user_agent") or ""),
        ),
        ("PERFORMER", performer_link(base, e.get("performer"))),
        (
            "SESSION",
            session_link(base, e.get("session_id_hash"), None)
            if e.get("session_id_hash")
            else DASH,
        ),
        ("MACHINE ID", _code(e.get("machine_identifier"))),
        ("REQUEST ID", request_link(base, e.get("request_id"))),
        ("HOST", fmt("{}://{}", e.get("scheme") or "", e.get("host") or "")),
    ]
    headers = e.get("headers")
    if isinstance(headers, Mapping) and headers:
        rows.append(("HEADERS", join((fmt("{}: {}", k, v) for k, v in headers.items()), "<br>")))
    return rows


def _audit(base: str, a: Mapping[str, Any], diff: Callable[[Any], Markup]) -> list[_Field]:
    return [
        (
            "CHANGE",
            fmt(
                "<b>{}</b> {}",
                a.get("action") or "",
                entity_link(base, a.get("entity_type"), a.get("entity_id")),
            ),
        ),
        ("DIFF", diff(a.get("diff"))),
        ("ACTOR", performer_link(base, a.get("actor"))),
        ("WHEN", _when(a.get("timestamp"))),
        ("REASON", _text(a.get("reason"))),
        ("REQUEST ID", request_link(base, a.get("request_id")) if a.get("request_id") else DASH),
        ("SESSION", session_link(base, a.get("session_id")) if a.get("session_id") else DASH),
        ("CLIENT IP", _code(a.get("ip"))),
        (
            "CHAIN",
            fmt(
                "<code>{}</code> row {} · hash <code>{}</code>",
                a.get("chain") or "",
                a.get("seq") or "",
                str(a.get("hash") or "")[:16],
            ),
        ),
    ]


def _log(base: str, e: Mapping[str, Any]) -> list[_Field]:
    exception = e.get("exception")
    return [
        ("LEVEL", fmt("<b>{}</b> · <code>{}</code>", e.get("action") or "", e.get("logger") or "")),
        ("MESSAGE", fmt('<span class="logmsg">{}</span>', e.get("message") or "")),
        ("EXCEPTION", fmt('<pre class="exception">{}</pre>', exception) if exception else DASH),
        ("WHEN", _when(e.get("timestamp"))),
        ("WHERE", _code(e.get("origin"))),
        ("ROUTE", _code(e.get("route"))),
        ("PERFORMER", performer_link(base, None, e.get("performer_id"))),
        ("REQUEST ID", request_link(base, e.get("request_id")) if e.get("request_id") else DASH),
    ]


def _advisory(base: str, e: Mapping[str, Any]) -> list[_Field]:
    evidence = e.get("evidence")
    links = (
        join((record_link(base, i, str(i)[:20], "evidence") or _code(i) for i in evidence), ", ")
        if isinstance(evidence, list) and evidence
        else DASH
    )
    details = e.get("details")
    rows: list[_Field] = [
        (
            "ADVISORY",
            fmt(
                "<b>{}</b> · {} · {}",
                e.get("severity") or "",
                _code(e.get("rule")),
                e.get("message") or "",
            ),
        ),
        ("WHEN", _when(e.get("timestamp"))),
        ("PERFORMER", performer_link(base, None, e.get("performer_id"))),
        ("CLIENT IP", _code(e.get("ip"))),
        ("EVIDENCE", links),
        ("REQUEST ID", request_link(base, e.get("request_id")) if e.get("request_id") else DASH),
        ("SESSION", session_link(base, e.get("session_id")) if e.get("session_id") else DASH),
    ]
    if isinstance(details, Mapping) and details:
        rows.append(
            (
                "DETAILS",
                join(
                    (
                        fmt(
                            "<b>{}</b>: {}",
                            k,
                            v
                            if isinstance(v, str)
                            else json.dumps(v, ensure_ascii=False, default=str),
                        )
                        for k, v in details.items()
                    ),
                    "<br>",
                ),
            )
        )
    return rows


def _session(base: str, s: Mapping[str, Any]) -> list[_Field]:
    state = (
        Markup("<b>active</b>")
        if s.get("active")
        else fmt("<b>ended</b> {} · {}", _when(s.get("ended_at")), s.get("end_reason") or "")
    )
    geo = s.get("geoLocationInfoOfIp") or {}
    return [
        ("SESSION", session_link(base, s.get("_id"), s.get("_id"))),
        ("STATE", state),
        ("PERFORMER", performer_link(base, s.get("performer"))),
        ("STARTED", _when(s.get("session_start"))),
        ("LAST SEEN", _when(s.get("last_seen"))),
        (
            "DEVICE",
            fmt("{}<br><small>{}</small>", _text(device_text(s)), s.get("user_agent") or ""),
        ),
        ("LOCATION", _text(location_text(geo))),
        ("IP", _code(s.get("ip"))),
        ("MACHINE ID", _code(s.get("machine_identifier"))),
    ]


def card_body(base: str, item: Mapping[str, Any], diff: Callable[[Any], Markup]) -> Markup:
    """The card's fields, its permalink and the raw JSON (open, not folded)."""
    kind = item.get("kind") or ("session" if "session_start" in item else "")
    if kind == "access":
        rows = _access(base, item)
    elif kind == "audit":
        rows = _audit(base, item, diff)
    elif kind == "log":
        rows = _log(base, item)
    elif kind == "advisory":
        rows = _advisory(base, item)
    elif kind == "session":
        rows = _session(base, item)
    else:
        rows = []
    permalink = record_link(base, item.get("_id")) if kind in _PERMALINKED else Markup("")
    return fmt(
        '<div class="card card-{}">{}<p class="card-links">{}</p>{}</div>',
        kind or "other",
        _fields(rows) if rows else "",
        permalink,
        raw_json(item),
    )


#: The kinds ``<mount>/records/<id>`` finds (a session has its own view).
_PERMALINKED = frozenset({"access", "audit", "log", "advisory"})


def card(base: str, item: Mapping[str, Any], diff: Callable[[Any], Markup]) -> Markup:
    """MORE DETAILS of one record: the card, folded."""
    return fmt(
        '<details class="more"><summary>MORE DETAILS</summary>{}</details>',
        card_body(base, item, diff),
    )
