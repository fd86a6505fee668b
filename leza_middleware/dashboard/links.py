"""Where each traceability view lives under the mount, and links to it.

Every request id, session id, performer and entity the dashboard shows links
to its view (``<mount>/requests/<id>``, ``/sessions/<id>``,
``/performers/<id>``, ``/audit/<type>/<id>``) and every record has a
permalink (``/records/<id>``). Other tabs (STATE) build their links here too::

    from leza_middleware.dashboard.links import performer_link, request_url

    request_url(page.base, "55ceb4cc56d72a3f22c200000004c816")
    # '/leza/requests/55ceb4cc56d72a3f22c200000004c816'

Ids are percent-encoded as one path segment each (``/`` too; an id that is
``.`` or ``..`` as ``%2E``, so that it never reads as a path step). A value the view would
refuse (:mod:`.inputs`) is shown as plain text, never as a broken link.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .html import Markup, fmt
from .inputs import BadInput, entity_part, event_id, performer_id, request_id, session_id

__all__ = [
    "entity_link",
    "entity_url",
    "performer_link",
    "performer_url",
    "record_link",
    "record_url",
    "request_link",
    "request_url",
    "session_link",
    "session_url",
]


#: Characters a path segment carries as they are (RFC 3986's unreserved ones).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~\-]+")


def _segment(value: str) -> str:
    # Most ids (hex hashes, numbers, names) need no encoding: skip quote()'s work.
    encoded = value if _UNRESERVED.fullmatch(value) else quote(value, safe="")
    # "." and ".." would read as path steps (browsers resolve them): encode them.
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def _valid(check: Any, value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        check("id", value)
    except BadInput:
        return None
    return value


def request_url(base: str, request_id_: str) -> str:
    """``<mount>/requests/<request id>``: the request and everything it wrote."""
    return f"{base}/requests/{_segment(request_id_)}"


def session_url(base: str, session_id_: str) -> str:
    """``<mount>/sessions/<session _id>`` (the public id, never the cookie)."""
    return f"{base}/sessions/{_segment(session_id_)}"


def performer_url(base: str, performer_id_: str) -> str:
    """``<mount>/performers/<performer id>``."""
    return f"{base}/performers/{_segment(performer_id_)}"


def entity_url(base: str, entity_type: str, entity_id: str) -> str:
    """``<mount>/audit/<entity type>/<entity id>``: the entity's history."""
    return f"{base}/audit/{_segment(entity_type)}/{_segment(entity_id)}"


def record_url(base: str, event_id_: str) -> str:
    """``<mount>/records/<_id>``: one record's permalink."""
    return f"{base}/records/{_segment(event_id_)}"


def request_link(base: str, rid: object, text: Markup | None = None) -> Markup:
    """``text`` (default: the request id) as a link to the request's view; plain
    when the id is not one a request can have."""
    valid = _valid(request_id, rid)
    shown = fmt("<code>{}</code>", rid or "") if text is None else text
    if valid is None:
        return shown
    return fmt(
        '<a class="trace" href="{}" title="request {}">{}</a>',
        request_url(base, valid),
        valid,
        shown,
    )


def session_link(base: str, sid: object, text: object = None) -> Markup:
    valid = _valid(session_id, sid)
    if valid is None:
        return fmt("<code>{}</code>", sid or "")
    shown = valid[:12] + "…" if text is None and len(valid) > 14 else (text or valid)
    return fmt(
        '<a class="trace" href="{}" title="{}"><code>{}</code></a>',
        session_url(base, valid),
        valid,
        shown,
    )


def performer_link(base: str, performer: Mapping[str, Any] | None, ident: object = None) -> Markup:
    """A performer's name (id and e-mail on hover) linking to their view; "anonymous"
    without one. ``ident``: a bare id, when there is no performer record."""
    if not performer and not ident:
        return Markup('<span class="muted">anonymous</span>')
    pid = str((performer or {}).get("id") or ident or "")
    name = str((performer or {}).get("name") or "") or pid
    hover = " · ".join(x for x in (f"id {pid}", str((performer or {}).get("email") or "")) if x)
    valid = _valid(performer_id, pid)
    if valid is None:
        return fmt('<span title="{}">{}</span>', hover, name)
    return fmt(
        '<a class="trace" href="{}" title="{}">{}</a>', performer_url(base, valid), hover, name
    )


def entity_link(base: str, entity_type: object, entity_id: object) -> Markup:
    """``type #id`` linking to the entity's history."""
    etype = "" if entity_type is None else str(entity_type)
    eid = "" if entity_id is None else str(entity_id)
    text = fmt("<code>{}</code> #<code>{}</code>", etype, eid)
    if _valid(entity_part, etype) is None or _valid(entity_part, eid) is None:
        return text
    return fmt('<a class="trace" href="{}">{}</a>', entity_url(base, etype, eid), text)


def record_link(
    base: str, ident: object, text: str = "PERMALINK", cls: str = "permalink"
) -> Markup:
    """A link to one record's permalink (nothing when ``ident`` cannot be a record id)."""
    valid = _valid(event_id, ident)
    if valid is None:
        return Markup("")
    return fmt('<a class="{}" href="{}">{}</a>', cls, record_url(base, valid), text)
