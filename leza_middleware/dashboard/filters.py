"""The filters of a dashboard view, read from and written back to the URL query.

``from``, ``to`` (ISO 8601 date or date-time, inclusive, UTC), ``action``,
``performer``, ``limit`` and ``cursor``: the same names in the HTML views and
the JSON API, so a filtered view is a URL that can be shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlencode

from ..query import parse_cursor, to_us

__all__ = ["DEFAULT_DAYS", "DEFAULT_LIMIT", "MAX_LIMIT", "FilterError", "Filters"]

#: FROM defaults to this many days before today (UTC); TO to today.
DEFAULT_DAYS = 30
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
_MAX_TEXT = 200


class FilterError(ValueError):
    """A query parameter the dashboard cannot use (answered with 400)."""


@dataclass(frozen=True)
class Filters:
    since: str  # as given (or the default): shown back in the form unchanged
    until: str
    action: str = ""
    performer: str = ""
    limit: int = DEFAULT_LIMIT
    cursor: str = ""

    @classmethod
    def parse(cls, params: Mapping[str, str], today: date | None = None) -> Filters:
        """Validate ``params``; missing FROM/TO mean the last :data:`DEFAULT_DAYS` days."""
        today = today or datetime.now(timezone.utc).date()
        since = params.get("from", "").strip() or (today - timedelta(days=DEFAULT_DAYS)).isoformat()
        until = params.get("to", "").strip() or today.isoformat()
        for name, value in (("from", since), ("to", until)):
            try:
                to_us(value)
            except ValueError:
                raise FilterError(
                    f"{name}: not an ISO 8601 date or date-time (e.g. 2025-07-06 or "
                    f"2025-07-06T15:49:24Z): {value[:_MAX_TEXT]!r}"
                ) from None
        action = params.get("action", "").strip()
        performer = params.get("performer", "").strip()
        if len(action) > _MAX_TEXT or len(performer) > _MAX_TEXT:
            raise FilterError(f"action and performer are at most {_MAX_TEXT} characters")
        text = params.get("limit", "").strip() or str(DEFAULT_LIMIT)
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise FilterError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        cursor = params.get("cursor", "").strip()
        try:
            parse_cursor(cursor)
        except ValueError:
            raise FilterError("cursor: not a cursor returned by this dashboard") from None
        return cls(since, until, action, performer, int(text), cursor)

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
        }
        values.update({k: str(v) for k, v in changes.items()})
        return urlencode({k: v for k, v in values.items() if v})
