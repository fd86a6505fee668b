"""The filters of a dashboard view, read from and written back to the URL query.

``from``, ``to`` (ISO 8601 date or date-time, inclusive, UTC), ``action``,
``performer``, ``limit`` and ``cursor``, and on ACCESS ``endpoint`` (``GET
/items/{item_id}``: STATE's endpoint rows link with it): the same names in the
HTML views and the JSON API, so a filtered view is a URL that can be shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlencode

from ..query import MAX_CURSOR, parse_cursor, to_us
from ..state.labels import ENDPOINT_MAX, parse_endpoint
from .inputs import BadInput, Params, clean_text, iso_time, whole_number

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "NAMES",
    "FilterError",
    "Filters",
]

#: FROM defaults to this many days before today (UTC); TO to today.
DEFAULT_DAYS = 30
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
#: The query parameters that are filters (everything else in a URL is ignored).
NAMES = frozenset({"from", "to", "action", "performer", "limit", "cursor", "endpoint"})

#: A query parameter the dashboard cannot use (answered with 400 naming it).
FilterError = BadInput


@dataclass(frozen=True)
class Filters:
    since: str  # as given (or the default): shown back in the form unchanged
    until: str
    action: str = ""
    performer: str = ""
    limit: int = DEFAULT_LIMIT
    cursor: str = ""
    endpoint: str = ""  # ACCESS only: "GET /items/{item_id}", "/items/{item_id}", "(unmatched)"

    @classmethod
    def parse(cls, params: Params | Mapping[str, str], today: date | None = None) -> Filters:
        """Validate ``params`` strictly (see :mod:`.inputs`); missing FROM/TO mean
        the last :data:`DEFAULT_DAYS` days. Raises :class:`FilterError`."""
        if not isinstance(params, Params):
            params = Params.of(params)
        today = today or datetime.now(timezone.utc).date()
        since = params.get("from").strip() or (today - timedelta(days=DEFAULT_DAYS)).isoformat()
        until = params.get("to").strip() or today.isoformat()
        iso_time("from", since)
        iso_time("to", until, end=True)
        action = clean_text("action", params.get("action"))
        performer = clean_text("performer", params.get("performer"))
        text = params.get("limit").strip()
        limit = whole_number("limit", text, 1, MAX_LIMIT) if text else DEFAULT_LIMIT
        cursor = params.get("cursor").strip()
        try:
            parse_cursor(cursor)
        except ValueError:
            raise FilterError(
                "cursor",
                f"cursor: not a cursor returned by this dashboard (at most {MAX_CURSOR} "
                "characters)",
            ) from None
        endpoint = clean_text("endpoint", params.get("endpoint"), ENDPOINT_MAX)
        if endpoint:
            try:
                parse_endpoint(endpoint)
            except ValueError:
                raise FilterError(
                    "endpoint",
                    "endpoint: a method and route template (GET /items/{item_id}), a route "
                    "template alone or (unmatched)",
                ) from None
        return cls(since, until, action, performer, limit, cursor, endpoint)

    @property
    def since_us(self) -> int | None:
        return to_us(self.since)

    @property
    def until_us(self) -> int | None:
        return to_us(self.until, end=True)

    def first_page(self) -> Filters:
        return replace(self, cursor="")

    def query(self, **changes: str | int) -> str:
        """The URL query of these filters (empty values left out), with ``changes``."""
        values = {
            "from": self.since,
            "to": self.until,
            "action": self.action,
            "performer": self.performer,
            "limit": "" if self.limit == DEFAULT_LIMIT else str(self.limit),
            "cursor": self.cursor,
            "endpoint": self.endpoint,
        }
        values.update({k: str(v) for k, v in changes.items()})
        return urlencode({k: v for k, v in values.items() if v})
