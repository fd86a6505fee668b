"""Whole pages: a tab (layout, filters, summary, table, pager), the revoke
confirmation, and the short message pages (403, 404, 400, 503)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .cards import raw_json
from .filters import DEFAULT_LIMIT, Filters
from .html import Markup, csp_hash, fmt, join, render, resource
from .rows import (
    access_table,
    advisory_table,
    audit_table,
    generic_table,
    log_table,
    session_table,
)
from .tabs import COUNT_CAP, NAV, STATE, Rows, Tab
from .timefmt import absolute, relative

__all__ = ["CSP", "MESSAGE_CSP", "Chain", "Page", "confirm_page", "message_page", "tab_page"]

_LIMITS = (25, DEFAULT_LIMIT, 100, 200, 500, 1000)


def _style() -> Markup:
    return Markup(resource("dashboard.css"))


def _script() -> Markup:
    return Markup(resource("dashboard.js"))


#: Only the page's own inline style and script run: no other source at all.
CSP = (
    f"default-src 'none'; style-src {csp_hash(resource('dashboard.css'))}; "
    f"script-src {csp_hash(resource('dashboard.js'))}; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
MESSAGE_CSP = (
    f"default-src 'none'; style-src {csp_hash(resource('dashboard.css'))}; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Chain:
    """The audit chain's state for the AUDIT tab."""

    state: str  # "ok", "broken", "unknown"
    text: str
    checked: str = ""  # ISO time of the check


@dataclass(frozen=True)
class Page:
    """What every page of one mount shares."""

    base: str  # the mount's URL prefix, no trailing slash
    app: str
    storage: str
    now_us: int
    csrf_field: str
    csrf_token: str

    def url(self, path: str, query: str = "") -> str:
        return f"{self.base}{path}" + (f"?{query}" if query else "")

    def layout(
        self,
        title: str,
        current: Tab | None,
        filters: Filters | None,
        body: Markup,
        *,
        carry: str | None = None,
    ) -> Markup:
        # Switching tabs keeps the period and the performer; the action
        # vocabulary differs per tab, a cursor belongs to one tab, an endpoint
        # to ACCESS. STATE opens on its own default (the last 24 hours) unless
        # it passes its period on itself (``carry``).
        if carry is None:
            carry = "" if filters is None else filters.query(action="", cursor="", endpoint="")
        tabs = join(
            fmt(
                '<a href="{}"{}>{}</a>',
                self.url(f"/{t.slug}", carry if t is not STATE or filters is None else ""),
                Markup(' aria-current="page"') if t is current else Markup(""),
                t.label,
            )
            for t in NAV
        )
        return render(
            "layout.html",
            title=title,
            style=_style(),
            script=_script(),
            home=self.url("/state"),
            app=self.app,
            storage=self.storage,
            tabs=tabs,
            body=body,
        )

    def revoke_form(self, session: Mapping[str, Any], back: str, view: str = "") -> Markup:
        """REVOKE: ``back`` is the SESSION tab's filters to return to; ``view``
        ("session", "performer") returns to that view of the session instead."""
        who = (session.get("performer") or {}).get("name") or (session.get("performer") or {}).get(
            "id"
        )
        return fmt(
            '<form method="post" action="{}" class="revoke" data-confirm="{}">'
            '<input type="hidden" name="{}" value="{}">'
            '<input type="hidden" name="session_id" value="{}">'
            '<input type="hidden" name="back" value="{}">'
            '<input type="hidden" name="view" value="{}">'
            '<input type="hidden" name="confirm" value="">'
            '<button type="submit">REVOKE</button></form>',
            self.url("/sessions/revoke"),
            f"Revoke the session of {who or 'this user'}? Its next request will be refused.",
            self.csrf_field,
            self.csrf_token,
            session.get("_id") or "",
            back,
            view,
        )


def _input_type(value: str) -> str:
    # A date picker for dates; a date-time given in the URL stays editable text.
    return "date" if len(value) == 10 else "text"


def _summary(tab: Tab, filters: Filters, rows: Rows, chain: Chain | None) -> Markup:
    if not rows.available:
        return Markup("")  # the empty state says it all (see _not_recorded)
    period = fmt("from <strong>{}</strong> to <strong>{}</strong>", filters.since, filters.until)
    if filters.endpoint and tab.kind == "access":
        period = fmt("of <code>{}</code> {}", filters.endpoint, period)
    if rows.count is None:
        counted = fmt("{} {}", tab.plural.capitalize(), period)
    else:
        n = rows.count
        number = f"{COUNT_CAP:,}+" if n > COUNT_CAP else f"{n:,}"
        counted = fmt(
            "<strong>{}</strong> {} {}", number, tab.noun if n == 1 else tab.plural, period
        )
    if chain is None:
        return counted
    return fmt(
        '{} <span class="chain {}" title="checked {}">CHAIN {}</span> <small>{}</small>',
        counted,
        chain.state,
        absolute(chain.checked),
        {"ok": "INTACT", "broken": "BROKEN"}.get(chain.state, "NOT CHECKED"),
        chain.text,
    )


#: What each kind not recorded yet will hold, for its empty state.
_COMING = {
    "advisory": "security advisories derived from the events: a new device or country, "
    "impossible travel, bursts of denials or failed logins, reuse of a revoked session",
    "log": "the application's own log records, tagged with the request id and performer",
}


def _not_recorded(tab: Tab) -> Markup:
    """The honest empty state of a kind this version does not record (not "no rows")."""
    noun = "advisories" if tab.kind == "advisory" else f"{tab.kind} records"
    return fmt(
        '<div class="unrecorded"><strong>No {} recorded yet.</strong> This version of '
        "leza-middleware does not record {}, so nothing is hidden here: the tab fills once "
        'it does. Its JSON API answers <code>"recorded": false</code>.</div>',
        noun,
        _COMING.get(tab.kind, noun),
    )


def tab_page(
    page: Page,
    tab: Tab,
    filters: Filters,
    rows: Rows,
    *,
    notice: Markup | None = None,
    chain: Chain | None = None,
) -> Markup:
    now, base = page.now_us, page.base
    if tab.slug == "access":
        table = access_table(base, rows.items, now)
    elif tab.slug == "audit":
        table = audit_table(base, rows.items, now)
    elif tab.sessions:
        back = filters.query()

        def revoke(s: Mapping[str, Any]) -> Markup:
            return page.revoke_form(s, back)

        table = session_table(base, rows.items, now, revoke)
    elif tab.kind == "advisory":
        table = advisory_table(base, rows.items, now)
    elif tab.kind == "log":
        table = log_table(base, rows.items, now)
    else:
        table = generic_table(base, rows.items, now, tab.plural)
    if not rows.available:
        table = _not_recorded(tab)
    pager = (
        []
        if not rows.available
        else [
            fmt(
                '<a href="{}">&larr; NEWEST</a>', page.url(f"/{tab.slug}", filters.query(cursor=""))
            )
            if filters.cursor
            else Markup('<span class="off">&larr; NEWEST</span>'),
            fmt(
                '<a href="{}" rel="next">OLDER &rarr;</a>',
                page.url(f"/{tab.slug}", filters.query(cursor=rows.next_cursor)),
            )
            if rows.next_cursor
            else Markup('<span class="off">OLDER &rarr;</span>'),
        ]
    )
    body = render(
        "tab.html",
        form_action=page.url(f"/{tab.slug}"),
        from_type=_input_type(filters.since),
        to_type=_input_type(filters.until),
        **{"from": filters.since, "to": filters.until},
        action_label="STATE" if tab.sessions else "ACTION",
        action=filters.action,
        action_options=join(fmt('<option value="{}">', a) for a in tab.actions),
        performer=filters.performer,
        endpoint_field=fmt(
            '<label>ENDPOINT <input name="endpoint" value="{}" placeholder="GET /items/{{id}}" '
            'size="20"></label>',
            filters.endpoint,
        )
        if tab.kind == "access"
        else Markup(""),
        limit_options=join(
            fmt(
                '<option value="{}"{}>{}</option>',
                n,
                Markup(" selected") if n == filters.limit else Markup(""),
                n,
            )
            for n in sorted({*_LIMITS, filters.limit})
        ),
        reset=page.url(f"/{tab.slug}"),
        notice=notice or Markup(""),
        summary=_summary(tab, filters, rows, chain),
        table=table,
        pager=join(pager, " "),
        api=page.url(f"/api/{tab.slug}", filters.query()),
    )
    return page.layout(tab.label, tab, filters, body)


def confirm_page(
    page: Page, session: Mapping[str, Any], back: str, view: str = "", cancel: str = ""
) -> Markup:
    performer = session.get("performer") or {}
    browser = session.get("browser") or {}
    os_ = session.get("os") or {}
    geo = session.get("geoLocationInfoOfIp") or {}
    start = session.get("session_start")
    body = render(
        "confirm.html",
        who=performer.get("name") or performer.get("id") or "An anonymous user",
        device=" on ".join(x for x in (browser.get("name"), os_.get("name")) if x)
        or "an unknown device",
        location=", ".join(x for x in (geo.get("city"), geo.get("country_name")) if x)
        or (session.get("ip") or "an unknown place"),
        started=f"{relative(start, page.now_us).lower()} ({absolute(start)})",
        form_action=page.url("/sessions/revoke"),
        csrf_field=page.csrf_field,
        csrf_token=page.csrf_token,
        session_id=session.get("_id") or "",
        back=back,
        view=view,
        cancel=cancel or page.url("/sessions", back),
    )
    return page.layout("Revoke session", None, None, Markup(body + raw_json(session)))


def message_page(title: str, message: str) -> Markup:
    """A page that says only ``message``: no data, no navigation (403 and errors)."""
    return render("message.html", title=title, message=message, style=_style())
