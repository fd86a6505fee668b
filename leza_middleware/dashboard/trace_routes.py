"""The traceability routes of the dashboard, HTML and JSON (``/api/…``):

* ``/requests/<request id>``, ``/sessions/<session _id>``, ``/performers/<id>``,
  ``/audit/<entity type>/<entity id>``, ``/records/<_id>``;
* their paging and notices: ``cursor`` and ``limit`` (session requests, entity
  history), ``revoked`` / ``gone`` (session ids) and ``revoked_all`` (a count).

A path id is parsed strictly (:mod:`.inputs`); one that cannot be an id, or
names nothing recorded, is the dashboard's 404, never a 500. A query
parameter that is not valid is a 400 naming it, as on the tabs. A performer
id or an entity id is the rest of the path: it may hold ``/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..trace.views import PAGE
from .filters import MAX_LIMIT
from .html import Markup, fmt
from .inputs import (
    BadInput,
    Params,
    cursor,
    entity_part,
    event_id,
    performer_id,
    request_id,
    session_id,
    whole_number,
)
from .responses import DashResponse, error_response, html_response, json_response
from .trace_pages import entity_page, performer_page, record_page, request_page, session_page

if TYPE_CHECKING:
    from .core import Dashboard, DashRequest

__all__ = ["TRACE_ROOTS", "answer_trace"]

#: The first path segment of each view.
TRACE_ROOTS = frozenset({"requests", "sessions", "performers", "audit", "records"})

_NOT_FOUND = {
    "requests": "No record with this request id is stored.",
    "sessions": "No session with this id is recorded.",
    "performers": "Nothing is recorded about this performer.",
    "audit": "No change of this entity is recorded.",
    "records": "No record with this id is stored.",
}


class _Unknown(Exception):
    """A path id that cannot be one: the view's 404."""


def _path_id(check: Callable[[str, str], str], field: str, value: str) -> str:
    try:
        return check(field, value)
    except BadInput:
        raise _Unknown from None


def _paging(query: Params) -> tuple[str, int]:
    text = query.get("limit").strip()
    limit = whole_number("limit", text, 1, MAX_LIMIT) if text else PAGE
    return cursor("cursor", query.get("cursor")), limit


def _notice(query: Params) -> Markup | None:
    revoked = query.get("revoked")
    if revoked:
        return fmt(
            '<p class="notice">Session <code>{}</code> was revoked.</p>',
            session_id("revoked", revoked),
        )
    gone = query.get("gone")
    if gone:
        return fmt(
            '<p class="notice warn">Session <code>{}</code> had already ended.</p>',
            session_id("gone", gone),
        )
    text = query.get("revoked_all").strip()
    if text:
        n = whole_number("revoked_all", text, 0, 1_000_000)
        if n == 0:
            return Markup('<p class="notice warn">No session was active: nothing to revoke.</p>')
        return fmt('<p class="notice">{} session{} revoked.</p>', n, "" if n == 1 else "s")
    return None


def answer_trace(dash: Dashboard, req: DashRequest, path: str, api: bool) -> DashResponse | None:
    """The response of a traceability route; None when ``path`` is not one."""
    rest = path[len("/api") :] if api else path
    root, sep, tail = rest[1:].partition("/")
    if not sep or root not in TRACE_ROOTS:
        return None
    try:
        return _answer(dash, req, root, tail, api)
    except _Unknown:
        return error_response(404, "Not found", _NOT_FOUND[root], api)


def _answer(dash: Dashboard, req: DashRequest, root: str, tail: str, api: bool) -> DashResponse:
    trace = dash.leza.trace
    query = req.query
    view: Mapping[str, Any] | None
    if root == "requests":
        rid = _path_id(request_id, "request_id", tail)
        view = trace.request(rid)
        if view is None:
            raise _Unknown
        return json_response(view) if api else html_response(request_page(dash.page(req), view))
    if root == "records":
        ident = _path_id(event_id, "id", tail)
        view = trace.record(ident)
        if view is None:
            raise _Unknown
        return json_response(view) if api else html_response(record_page(dash.page(req), view))
    if root == "sessions":
        sid = _path_id(session_id, "session_id", tail)
        at, limit = _paging(query)
        notice = None if api else _notice(query)
        view = trace.session(sid, limit=limit, cursor=at or None)
        if view is None:
            raise _Unknown
        if api:
            return json_response(view)
        page = dash.page(req)

        def revoke(s: Mapping[str, Any]) -> Markup:
            return page.revoke_form(s, "", "session")

        body = session_page(
            page,
            view,
            sid=sid,
            cursor=at,
            limit=limit,
            default_limit=PAGE,
            revoke=revoke,
            notice=notice,
        )
        return html_response(body)
    if root == "performers":
        pid = _path_id(performer_id, "performer_id", tail)
        notice = None if api else _notice(query)
        view = trace.performer(pid)
        if view is None:
            raise _Unknown
        if api:
            return json_response(view)
        page = dash.page(req)

        def revoke_one(s: Mapping[str, Any]) -> Markup:
            return page.revoke_form(s, "", "performer")

        return html_response(performer_page(page, view, revoke=revoke_one, notice=notice))
    # audit/<entity type>/<entity id>
    etype, sep, eid = tail.partition("/")
    if not sep:
        raise _Unknown
    etype = _path_id(entity_part, "entity_type", etype)
    eid = _path_id(entity_part, "entity_id", eid)
    at, limit = _paging(query)
    view = trace.entity(etype, eid, limit=limit, cursor=at or None)
    if view is None:
        raise _Unknown
    chain = dash.chain.get()
    if api:
        state = {"state": chain.state, "text": chain.text, "checked": chain.checked}
        return json_response({**view, "chain": state})
    body = entity_page(
        dash.page(req), view, cursor=at, limit=limit, default_limit=PAGE, chain=chain
    )
    return html_response(body)
