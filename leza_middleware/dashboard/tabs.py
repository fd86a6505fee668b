"""The five tabs and how each one reads its rows through ``leza.query``.

A tab's rows are the records' ``to_dict()`` forms, for the HTML view and the
JSON API alike. ADVISORY and LOG read the ``"advisory"`` and ``"log"`` kinds:
when an event type of that kind does not exist (``events.EVENT_TYPES``) or the
storage has no place for it, the tab says so rather than showing an empty
table that looks like "nothing happened".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..events import EVENT_TYPES
from .filters import FilterError, Filters

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = [
    "COUNT_CAP",
    "NAV",
    "STATE",
    "TABS",
    "TABS_BY_SLUG",
    "Rows",
    "Tab",
    "read_rows",
    "recorded",
]

#: Counts stop here ("10,000+"): bounded work whatever the table holds (see
#: docs/dashboard.md for what an exact count over 1,000,000 rows costs).
COUNT_CAP = 10_000


@dataclass(frozen=True)
class Tab:
    slug: str  # its URL: <mount>/<slug> and <mount>/api/<slug>
    label: str
    kind: str  # the storage kind it reads
    noun: str  # what one row is, for counts ("1 request")
    plural: str  # and many ("12 requests")
    actions: tuple[str, ...]  # suggestions for the action filter

    @property
    def sessions(self) -> bool:
        return self.kind == "session"


TABS = (
    Tab("audit", "AUDIT", "audit", "change", "changes",
        ("create", "update", "delete", "bulk_update", "bulk_delete", "revoke")),
    Tab("access", "ACCESS", "access", "request", "requests",
        ("access", "denied", "login", "logout", "login_failed", "revoke")),
    # The rule names of leza_middleware.advisories' default rules.
    Tab("advisories", "ADVISORY", "advisory", "advisory", "advisories",
        ("new_machine", "new_country", "impossible_travel", "burst", "revoked_session_reuse",
         "bot_login", "service_down", "service_recovered")),
    Tab("sessions", "SESSION", "session", "session", "sessions", ("active", "ended")),
    Tab("logs", "LOG", "log", "record", "records",
        ("debug", "info", "warning", "error", "critical")),
)  # fmt: skip
TABS_BY_SLUG = {t.slug: t for t in TABS}
#: STATE (dashboard/state_view.py): not a list of records, but first in the tab bar.
STATE = Tab("state", "STATE", "state", "request", "requests", ())
NAV = (STATE, *TABS)

#: The SESSION tab's action filter is the session's state.
_SESSION_STATES = {"": None, "active": True, "ended": False}


@dataclass(frozen=True)
class Rows:
    items: list[dict[str, Any]]
    next_cursor: str | None
    available: bool = True  # False: this version records nothing of this kind
    count: int | None = None  # None: not counted (or the storage cannot)


def recorded(leza: Leza, tab: Tab) -> bool:
    """Whether the tab's kind is recorded at all: an event type of this version
    of the library, with a place in the configured storage."""
    return tab.kind in EVENT_TYPES and leza.storage.stores(tab.kind)


def read_rows(leza: Leza, tab: Tab, filters: Filters, *, count: bool = False) -> Rows:
    """One page of ``tab`` under ``filters``, newest first; with ``count``, how many
    match in all (up to :data:`COUNT_CAP` + 1)."""
    if not recorded(leza, tab):
        return Rows([], None, available=False)
    query = leza.query
    common: dict[str, Any] = {
        "since": filters.since,
        "until": filters.until,
        "performer_id": filters.performer or None,
    }
    extra: dict[str, Any]
    if tab.sessions:
        if filters.action not in _SESSION_STATES:
            raise FilterError(
                "action", "action: on the SESSION tab it is the state, active or ended"
            )
        extra = {"active": _SESSION_STATES[filters.action]}
        page = query.sessions(**common, **extra, limit=filters.limit, cursor=filters.cursor or None)
    else:
        extra = {"action": filters.action or None}
        if tab.kind == "access":
            extra["endpoint"] = filters.endpoint or None
        page = query.page(
            tab.kind, **common, **extra, limit=filters.limit, cursor=filters.cursor or None
        )
    total = query.count(tab.kind, **common, **extra, cap=COUNT_CAP) if count else None
    return Rows(page.items, page.next_cursor, count=total)
