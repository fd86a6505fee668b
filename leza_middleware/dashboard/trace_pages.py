"""The traceability views as pages: a request, a session, a performer, an entity's
history and one record (``leza.trace``'s dicts in, markup out).

Each reuses the tabs' tables and cards, so a row reads the same everywhere,
and ends with the link to the same view as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from .cards import card_body, device_text, location_text
from .html import Markup, fmt, join
from .links import (
    entity_url,
    performer_link,
    performer_url,
    record_url,
    request_url,
    session_link,
    session_url,
)
from .pages import Chain, Page
from .rows import (
    DASH,
    access_table,
    advisory_table,
    audit_table,
    badge,
    diff_cell,
    session_table,
    table,
    when,
)
from .timefmt import absolute

__all__ = [
    "entity_page",
    "performer_page",
    "record_page",
    "request_page",
    "revoke_all_confirm_page",
    "session_page",
]

EMPTY = Markup("")
#: A view's empty list (the tabs say "in this period": a view has no period).
NONE = "None recorded."


def _plural(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _requests(view: Mapping[str, Any]) -> str:
    """ "1,234 requests", or "2,000+ requests" past what the view reads."""
    n = int(view.get("request_count") or 0)
    if not view.get("request_count_exact", True):
        return f"{n:,}+ requests"
    return _plural(n, "request", "requests")


def _section(title: str, body: Markup, note: str = "") -> Markup:
    return fmt(
        '<section class="trace-part"><h2>{}</h2>{}{}</section>',
        title,
        fmt('<p class="summary">{}</p>', note) if note else "",
        body,
    )


def _api(page: Page, path: str, query: str = "") -> Markup:
    url = page.url(path, query)
    return fmt('<p class="api">JSON: <a href="{}">{}</a></p>', url, url)


def _header(kind: str, title: Markup, extra: Markup = EMPTY) -> Markup:
    return fmt(
        '<header class="view-head"><span class="view-kind">{}</span> <h1>{}</h1>{}</header>',
        kind,
        title,
        extra,
    )


def _summary_line(e: Mapping[str, Any]) -> Markup:
    kind = e.get("kind")
    if kind == "access":
        return fmt(
            "{} <code>{}</code> &rarr; <b>{}</b> {}",
            e.get("endpoint_type") or "",
            e.get("endpoint") or "",
            e.get("status") or "",
            e.get("reason") or "",
        )
    if kind == "audit":
        return fmt(
            "{} <code>{}</code> #<code>{}</code>",
            e.get("action") or "",
            e.get("entity_type") or "",
            e.get("entity_id") or "",
        )
    if kind == "log":
        return fmt("<code>{}</code> {}", e.get("logger") or "", e.get("message") or "")
    if kind == "advisory":
        return fmt("<b>{}</b> {}", e.get("severity") or "", e.get("message") or "")
    return Markup("")


# --------------------------------------------------------------------------- request


def request_page(page: Page, view: Mapping[str, Any]) -> Markup:
    rid = str(view["request_id"])
    counts = view.get("counts") or {}
    parts = [
        _plural(counts.get("access", 0), "request event", "request events"),
        _plural(counts.get("log", 0), "log record", "log records"),
        _plural(counts.get("audit", 0), "change", "changes"),
        _plural(counts.get("advisory", 0), "advisory", "advisories"),
    ]
    who = []
    if view.get("performer"):
        who.append(fmt("by {}", performer_link(page.base, view["performer"])))
    if view.get("session_id"):
        who.append(fmt("in session {}", session_link(page.base, view["session_id"])))
    summary = fmt("{}{}{}", ", ".join(parts), " · " if who else "", join(who, " "))
    if view.get("truncated"):
        summary = fmt("{} · only the newest {} of each kind are shown", summary, 200)
    items = [
        fmt(
            '<li class="kind-{}" id="r-{}"><div class="line">{} {} {}</div>{}</li>',
            e.get("kind") or "",
            e.get("_id") or "",
            when(e.get("timestamp"), page.now_us),
            badge(e.get("kind")),
            _summary_line(e),
            card_body(page.base, e, diff_cell),
        )
        for e in view.get("items") or []
    ]
    body = join(
        [
            _header("REQUEST", fmt("<code>{}</code>", rid)),
            fmt('<p class="summary">{}</p>', summary),
            fmt('<ol class="timeline">{}</ol>', join(items)),
            _api(page, "/api" + request_url("", rid)),
        ]
    )
    return page.layout(f"Request {rid}", None, None, body)


# --------------------------------------------------------------------------- session


def _pager(
    page: Page,
    path: str,
    cursor: str,
    next_cursor: str | None,
    limit: int,
    default_limit: int,
    first: str,
    further: str,
) -> Markup:
    extra = {} if limit == default_limit else {"limit": str(limit)}
    start = (
        fmt('<a href="{}">&larr; {}</a>', page.url(path, urlencode(extra)), first)
        if cursor
        else fmt('<span class="off">&larr; {}</span>', first)
    )
    more = (
        fmt(
            '<a href="{}" rel="next">{} &rarr;</a>',
            page.url(path, urlencode({**extra, "cursor": next_cursor})),
            further,
        )
        if next_cursor
        else fmt('<span class="off">{} &rarr;</span>', further)
    )
    return fmt('<nav class="pager">{} {}</nav>', start, more)


def places_table(items: Sequence[Mapping[str, Any]], now_us: int) -> Markup:
    rows = [
        fmt(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class='num'>{}</td></tr>",
            fmt(
                "<code>{}</code>{}",
                p.get("ip") or "",
                Markup(' <span class="badge a-denied">invalid</span>')
                if p.get("ip_valid") is False
                else "",
            ),
            location_text(p) or Markup('<span class="muted">unknown</span>'),
            when(p.get("first_seen"), now_us),
            when(p.get("last_seen"), now_us),
            f"{int(p.get('requests') or 0):,}",
        )
        for p in items
    ]
    return table(
        "places",
        ("IP", "LOCATION", "FIRST SEEN", "LAST SEEN", "REQUESTS"),
        rows,
        "No requests recorded.",
    )


def _scanned(view: Mapping[str, Any]) -> str:
    """The note on what the newest requests were drawn from, when not all were read."""
    if view.get("request_count_exact", True):
        return ""
    return f"from the newest {int(view.get('request_count') or 0):,} requests"


def session_page(
    page: Page,
    view: Mapping[str, Any],
    *,
    sid: str,
    cursor: str,
    limit: int,
    default_limit: int,
    revoke: Callable[[Mapping[str, Any]], Markup],
    notice: Markup | None,
) -> Markup:
    session = view.get("session")
    now = page.now_us
    requests = view["requests"]
    path = session_url("", sid)
    if session is None:
        head = _header("SESSION", fmt("<code>{}</code>", sid))
        card = fmt(
            '<p class="unrecorded">No session record is stored for this id (it was '
            "purged, or is not written yet); its requests follow.</p>"
        )
    else:
        state = (
            Markup('<span class="badge a-active">active</span>')
            if session.get("active")
            else fmt(
                '<span class="badge a-ended">ended</span> <small>{}</small>',
                session.get("end_reason") or "",
            )
        )
        who = performer_link(page.base, session.get("performer"))
        head = _header(
            "SESSION",
            fmt("{} {}", who, state),
            revoke(session) if session.get("active") else Markup(""),
        )
        card = card_body(page.base, session, diff_cell)
    body = join(
        [
            head,
            notice or Markup(""),
            card,
            _section(
                "WHERE IT WAS SEEN FROM",
                places_table(view.get("places") or [], now),
                _scanned(view),
            ),
            _section(
                "REQUESTS",
                join(
                    [
                        access_table(page.base, requests["items"], now, "No requests."),
                        _pager(
                            page,
                            path,
                            cursor,
                            requests.get("next_cursor"),
                            limit,
                            default_limit,
                            "NEWEST",
                            "OLDER",
                        ),
                    ]
                ),
                _requests(view) + " in this session, newest first",
            ),
            _section(
                "CHANGES MADE IN THIS SESSION",
                audit_table(page.base, view.get("changes") or [], now, NONE),
            ),
            _section(
                "ADVISORIES", advisory_table(page.base, view.get("advisories") or [], now, NONE)
            ),
            _api(page, f"/api{path}", urlencode({"cursor": cursor} if cursor else {})),
        ]
    )
    return page.layout("Session", None, None, body)


# --------------------------------------------------------------------------- performer


def _identity(performer: Mapping[str, Any]) -> Markup:
    rows = [
        (label, performer.get(key))
        for label, key in (
            ("ID", "id"),
            ("NAME", "name"),
            ("E-MAIL", "email"),
            ("ROLE", "role_name"),
            ("ORGANIZATION", "organization_name"),
            ("CLIENT ID", "clientid"),
        )
        if performer.get(key)
    ]
    return fmt(
        '<dl class="fields">{}</dl>', join(fmt("<dt>{}</dt><dd>{}</dd>", k, v) for k, v in rows)
    )


def _seen_table(
    cls: str,
    label: str,
    items: Sequence[Mapping[str, Any]],
    cell: Callable[[Mapping[str, Any]], Markup],
    now_us: int,
    empty: str,
) -> Markup:
    rows = [
        fmt(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class='num'>{}</td></tr>",
            cell(i),
            when(i.get("first_seen"), now_us),
            when(i.get("last_seen"), now_us),
            f"{int(i.get('requests') or 0):,}",
        )
        for i in items
    ]
    return table(cls, (label, "FIRST SEEN", "LAST SEEN", "REQUESTS"), rows, empty)


def revoke_all_form(page: Page, performer: Mapping[str, Any], active: int) -> Markup:
    who = performer.get("name") or performer.get("id") or "this user"
    return fmt(
        '<form method="post" action="{}" class="revoke revoke-all" data-confirm="{}">'
        '<input type="hidden" name="{}" value="{}">'
        '<input type="hidden" name="performer_id" value="{}">'
        '<input type="hidden" name="confirm" value="">'
        '<button type="submit">REVOKE ALL SESSIONS</button></form>',
        page.url("/sessions/revoke-all"),
        f"Revoke all {active} active session{'s' if active != 1 else ''} of {who}? "
        "Their next requests will be refused.",
        page.csrf_field,
        page.csrf_token,
        performer.get("id") or "",
    )


def performer_page(
    page: Page,
    view: Mapping[str, Any],
    *,
    revoke: Callable[[Mapping[str, Any]], Markup],
    notice: Markup | None,
) -> Markup:
    performer = view["performer"]
    now = page.now_us
    sessions = view.get("sessions") or []
    active = sum(1 for s in sessions if s.get("active"))
    name = performer.get("name") or performer.get("id") or ""
    head = _header(
        "PERFORMER",
        fmt("{}", name),
        revoke_all_form(page, performer, active) if active else Markup(""),
    )
    scanned = _scanned(view)
    body = join(
        [
            head,
            notice or Markup(""),
            _identity(performer),
            _section(
                "SESSIONS",
                session_table(page.base, sessions, now, revoke, NONE, cards=False),
                f"{active} active; active first, then the newest ended",
            ),
            _section(
                "DEVICES",
                _seen_table(
                    "devices",
                    "DEVICE",
                    view.get("devices") or [],
                    lambda d: fmt(
                        '<span title="{}">{}</span>',
                        d.get("user_agent") or "",
                        device_text(d) or "unknown",
                    ),
                    now,
                    "No device recorded.",
                ),
                scanned,
            ),
            _section(
                "MACHINE IDS",
                _seen_table(
                    "machines",
                    "MACHINE ID",
                    view.get("machines") or [],
                    lambda m: fmt("<code>{}</code>", m.get("machine_identifier") or ""),
                    now,
                    "No machine id recorded.",
                ),
                scanned,
            ),
            _section(
                "COUNTRIES",
                _seen_table(
                    "countries",
                    "COUNTRY",
                    view.get("countries") or [],
                    lambda c: fmt(
                        "{} <code>{}</code>",
                        c.get("country_name") or "unknown",
                        c.get("country_code") or "",
                    ),
                    now,
                    "No location recorded.",
                ),
                scanned,
            ),
            _section(
                "DENIED REQUESTS AND FAILED LOGINS",
                access_table(page.base, view.get("refused") or [], now, NONE),
                "newest first",
            ),
            _section(
                "CHANGES MADE BY THEM", audit_table(page.base, view.get("changes") or [], now, NONE)
            ),
            _section(
                "ADVISORIES", advisory_table(page.base, view.get("advisories") or [], now, NONE)
            ),
            _api(page, "/api" + performer_url("", str(performer.get("id") or ""))),
        ]
    )
    return page.layout(f"Performer {name}", None, None, body)


def revoke_all_confirm_page(page: Page, performer: Mapping[str, Any], active: int) -> Markup:
    """Without JavaScript, the first POST of REVOKE ALL SESSIONS asks with this page."""
    who = performer.get("name") or performer.get("id") or "this user"
    body = fmt(
        '<section class="confirm"><h1>Revoke every session of {}?</h1>'
        "<p>{} active session{} of <b>{}</b> (id <code>{}</code>) end now: each one's next "
        "request is refused and the browser has to sign in again. The revocation is recorded "
        "in ACCESS and AUDIT.</p>"
        '<form method="post" action="{}"><input type="hidden" name="{}" value="{}">'
        '<input type="hidden" name="performer_id" value="{}">'
        '<input type="hidden" name="confirm" value="1">'
        '<button type="submit" class="danger">REVOKE ALL SESSIONS</button> '
        '<a href="{}">Cancel</a></form></section>',
        who,
        active,
        "" if active == 1 else "s",
        who,
        performer.get("id") or "",
        page.url("/sessions/revoke-all"),
        page.csrf_field,
        page.csrf_token,
        performer.get("id") or "",
        performer_url(page.base, str(performer.get("id") or "")),
    )
    return page.layout("Revoke all sessions", None, None, body)


# --------------------------------------------------------------------------- entity


def _intact(value: object) -> Markup:
    if value is True:
        return Markup('<span class="chain ok" title="its content matches its chain hash">OK</span>')
    if value is False:
        return Markup(
            '<span class="chain broken" title="its content does not match its chain '
            'hash: edited after it was written">EDITED</span>'
        )
    return Markup('<span class="chain unknown" title="written with another secret key">?</span>')


def entity_page(
    page: Page,
    view: Mapping[str, Any],
    *,
    cursor: str,
    limit: int,
    default_limit: int,
    chain: Chain | None,
) -> Markup:
    etype, eid = str(view["entity_type"]), str(view["entity_id"])
    now = page.now_us
    rows = [
        fmt(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "</tr>",
            when(a.get("timestamp"), now),
            performer_link(page.base, a.get("actor")),
            badge(a.get("action")),
            diff_cell(a.get("diff")),
            fmt('<a class="trace" href="{}">request</a>', request_url(page.base, a["request_id"]))
            if a.get("request_id")
            else DASH,
            _intact(a.get("intact")),
            fmt(
                '<details class="more"><summary>MORE DETAILS</summary>{}</details>',
                card_body(page.base, a, diff_cell),
            ),
        )
        for a in view.get("items") or []
    ]
    history = table(
        "audit history",
        ("TIME", "ACTOR", "ACTION", "CHANGES", "MADE BY", "ROW", ""),
        rows,
        "No changes.",
    )
    state = Markup("")
    if chain is not None:
        label = {"ok": "INTACT", "broken": "BROKEN"}.get(chain.state, "NOT CHECKED")
        state = fmt(
            '<span class="chain {}" title="checked {}">CHAIN {}</span> <small>{}</small>',
            chain.state,
            absolute(chain.checked),
            label,
            chain.text,
        )
    path = entity_url("", etype, eid)
    body = join(
        [
            _header("ENTITY", fmt("<code>{}</code> #<code>{}</code>", etype, eid)),
            fmt('<p class="summary">Every change, oldest first. {}</p>', state),
            history,
            _pager(
                page, path, cursor, view.get("next_cursor"), limit, default_limit, "OLDEST", "NEWER"
            ),
            _api(page, "/api" + path, urlencode({"cursor": cursor} if cursor else {})),
        ]
    )
    return page.layout(f"History of {etype} #{eid}", None, None, body)


# --------------------------------------------------------------------------- record


def record_page(page: Page, view: Mapping[str, Any]) -> Markup:
    record = view["record"]
    kind = str(view.get("kind") or "")
    parts = [
        _header(kind.upper(), fmt("{}", _summary_line(record) or record.get("_id") or "")),
        card_body(page.base, record, diff_cell),
    ]
    evidence = view.get("evidence")
    if evidence is not None:
        listed = [
            fmt(
                '<li class="kind-{}"><div class="line">{} {} {}</div>{}</li>',
                e.get("kind") or "",
                when(e.get("timestamp"), page.now_us),
                badge(e.get("kind")),
                _summary_line(e),
                card_body(page.base, e, diff_cell),
            )
            for e in evidence
        ]
        missing = len(record.get("evidence") or []) - len(evidence)
        note = (
            f"{missing} more not stored (a session change is folded into its session)"
            if missing > 0
            else ""
        )
        parts.append(_section("EVIDENCE", fmt('<ol class="timeline">{}</ol>', join(listed)), note))
    parts.append(_api(page, "/api" + record_url("", str(record.get("_id") or ""))))
    return page.layout(f"{kind} record", None, None, join(parts))
