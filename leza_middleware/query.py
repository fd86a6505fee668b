"""The read API shared by users, the dashboard and the CLI: ``leza.query.access(...)``."""

from __future__ import annotations

import math
import re
import time as _time
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .ready import ReadyStorage
from .state.traffic import DAY, Traffic, TrafficUnsupported, bucket_seconds_for
from .storage.base import QueryFilter, Storage
from .storage.capabilities import Capability, missing_sentence

if TYPE_CHECKING:
    from .state.build import Live

__all__ = ["Query", "QueryPage", "parse_cursor", "to_us"]

TimeLike = datetime | date | str | int | float | None

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_LIMIT = 10_000
#: The times a bound may take (µs since the epoch): what ``datetime`` can show,
#: years 1 to 9999 in UTC, well inside a signed 64-bit column.
MIN_US = -62_135_596_800_000_000
MAX_US = 253_402_300_799_999_999
#: A cursor: the (ts, id) of a row, ``<µs>_<id>``; bounded so any storage can bind it.
MAX_CURSOR = 128
_CURSOR = re.compile(r"([0-9]{1,19})_([A-Za-z0-9]{1,100})")
_INT64 = 2**63 - 1


def to_us(value: TimeLike, *, end: bool = False) -> int | None:
    """µs since the epoch from a datetime, date, ISO 8601 string or epoch seconds.

    Naive datetimes are UTC. A bare date means the whole day: its start for
    ``since`` and its last microsecond for ``until`` (``end=True``), so both
    bounds are inclusive.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a time bound cannot be a bool")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"not a time: {value!r}")
        return _in_range(int(value * 1_000_000), value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                value = date.fromisoformat(text)
            else:
                value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 date or date-time: {value!r}") from None
    if not isinstance(value, datetime):
        day = datetime.combine(value, time.min, tzinfo=timezone.utc)
        if end:
            day += timedelta(days=1, microseconds=-1)
        value = day
    elif value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - _EPOCH
    return _in_range((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds, value)


def _in_range(us: int, given: object) -> int:
    # An offset can carry a date at either end of ``datetime``'s range past it.
    if not MIN_US <= us <= MAX_US:
        raise ValueError(f"time out of range (years 1 to 9999 UTC): {given!r:.80}")
    return us


def time_us() -> int:
    """Now, in µs since the epoch."""
    return _time.time_ns() // 1000


def format_cursor(cursor: tuple[int, str] | None) -> str | None:
    return None if cursor is None else f"{cursor[0]}_{cursor[1]}"


def parse_cursor(text: str | None) -> tuple[int, str] | None:
    """Parse an opaque cursor returned by a previous page.

    Strict: ASCII digits, an ASCII id, at most :data:`MAX_CURSOR` characters
    and a time that fits a signed 64-bit column; anything else is a ValueError
    (never an error of the database it would have been bound to).
    """
    if not text:
        return None
    found = _CURSOR.fullmatch(text) if len(text) <= MAX_CURSOR else None
    if found is None or int(found.group(1)) > _INT64:
        raise ValueError(f"invalid cursor {text[:MAX_CURSOR]!r}")
    return int(found.group(1)), found.group(2)


@dataclass(frozen=True)
class QueryPage:
    items: list[dict[str, Any]]
    next_cursor: str | None  # pass as ``cursor=`` for the next (older) page


class Query:
    """Newest-first reads over recorded events. Each record is a plain dict."""

    def __init__(
        self, storage: Storage, *, ready: ReadyStorage | None = None, live: Live | None = None
    ) -> None:
        """``ready``: the storage's set-up gate, shared with the other readers of
        one Leza (default: this query API's own). ``live``: this process's
        recorder and availability monitor, which STATE reports on."""
        self._storage = storage
        self._gate = ReadyStorage(storage) if ready is None else ready
        #: The running parts STATE reports on (None: a query API over storage alone).
        self.live = live

    def ensure_ready(self) -> Storage:
        """The storage, set up before its first read (LezaError when unreachable)."""
        return self._gate.ready()

    @staticmethod
    def _filter(
        since: TimeLike,
        until: TimeLike,
        action: str | None,
        performer_id: str | None,
        limit: int,
        cursor: str | None,
        endpoint: str | None = None,
    ) -> QueryFilter:
        if not 1 <= int(limit) <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        return QueryFilter(
            since=to_us(since),
            until=to_us(until, end=True),
            action=action or None,
            performer_id=performer_id or None,
            limit=int(limit),
            cursor=parse_cursor(cursor),
            endpoint=endpoint if endpoint is None else str(endpoint),
        )

    def page(
        self,
        kind: str,
        *,
        since: TimeLike = None,
        until: TimeLike = None,
        action: str | None = None,
        performer_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        endpoint: str | None = None,
    ) -> QueryPage:
        """One page of ``kind`` records, newest first, and the cursor of the next.

        ``endpoint`` (access only): ``"GET /items/{item_id}"`` (that method and
        route template), ``"/items/{item_id}"`` (any method) or ``"(unmatched)"``
        (requests no route matched); the labels STATE's endpoint rows carry
        (``EndpointTraffic.endpoint``). ValueError for a malformed value or
        another kind.
        """
        flt = self._filter(since, until, action, performer_id, limit, cursor, endpoint)
        self.ensure_ready()
        page = self._storage.query(kind, flt)
        return QueryPage([e.to_dict() for e in page.events], format_cursor(page.next_cursor))

    def _items(
        self,
        kind: str,
        since: TimeLike,
        until: TimeLike,
        action: str | None,
        performer_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> list[dict[str, Any]]:
        """One page's records: what the per-kind readers below return."""
        return self.page(
            kind, since=since, until=until, action=action, performer_id=performer_id,
            limit=limit, cursor=cursor,
        ).items  # fmt: skip

    def sessions(
        self,
        *,
        since: TimeLike = None,
        until: TimeLike = None,
        active: bool | None = None,
        performer_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> QueryPage:
        """Sessions, active and ended (``active=True`` / ``False`` for one state),
        newest start first; ``since``/``until`` bound the start, inclusive."""
        flt = self._filter(since, until, None, performer_id, limit, cursor)
        self.ensure_ready()
        page = self._storage.query("session", replace(flt, active=active))
        return QueryPage([r.to_dict() for r in page.events], format_cursor(page.next_cursor))

    def count(
        self,
        kind: str,
        *,
        since: TimeLike = None,
        until: TimeLike = None,
        action: str | None = None,
        performer_id: str | None = None,
        active: bool | None = None,
        cap: int | None = None,
        endpoint: str | None = None,
    ) -> int | None:
        """How many ``kind`` records match (``active`` for sessions only,
        ``endpoint`` for access only, as in :meth:`page`).

        With ``cap``, counting may stop past ``cap`` rows: a result above ``cap``
        means "more than ``cap``". None when the storage cannot count.
        """
        flt = self._filter(since, until, action, performer_id, 1, None, endpoint)
        if not self._storage.supports(Capability.COUNT):
            return None
        self.ensure_ready()
        return self._storage.count(kind, replace(flt, active=active), cap)

    def audit(
        self,
        since: TimeLike = None,
        until: TimeLike = None,
        action: str | None = None,
        actor_id: str | None = None,
        entity_type: str | None = None,
        entity_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        performer_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Audit records across every entity type, newest first."""
        flt = self._filter(since, until, action, actor_id or performer_id, limit, cursor)
        self.ensure_ready()
        flt = replace(
            flt,
            entity_type=entity_type or None,
            entity_id=None if entity_id is None else str(entity_id),
        )
        return [e.to_dict() for e in self._storage.query("audit", flt).events]

    def access(
        self,
        since: TimeLike = None,
        until: TimeLike = None,
        action: str | None = None,
        performer_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        endpoint: str | None = None,
    ) -> list[dict[str, Any]]:
        """ACCESS events, newest first. ``since``/``until`` are inclusive.

        ``endpoint``: ``"GET /items/{item_id}"`` (that method and route
        template), ``"/items/{item_id}"`` (any method), ``"(unmatched)"``
        (requests no route matched), ``"OTHER /x"`` (methods outside the
        usual ones): the labels of STATE's endpoint rows.
        """
        return self.page(
            "access", since=since, until=until, action=action, performer_id=performer_id,
            limit=limit, cursor=cursor, endpoint=endpoint,
        ).items  # fmt: skip

    def traffic(
        self,
        since: TimeLike = None,
        until: TimeLike = None,
        bucket_seconds: int | None = None,
    ) -> Traffic:
        """Traffic of a window from the storage's rollups (``storage.traffic()``).

        ``since``/``until`` as for the other reads (inclusive; default: the
        last 24 hours up to now); ``bucket_seconds`` defaults to
        :func:`~leza_middleware.state.bucket_seconds_for` of the window.
        Raises :class:`~leza_middleware.state.TrafficUnsupported` when the
        storage does not declare the ``rollups`` capability, ValueError for a
        bad window.
        """
        until_us = to_us(until, end=True)
        if until_us is None:
            until_us = time_us()
        since_us = to_us(since)
        if since_us is None:
            since_us = until_us - DAY
        if since_us > until_us:
            raise ValueError("since is after until")
        if bucket_seconds is None:
            bucket_seconds = bucket_seconds_for(since_us, until_us)
        if not self._storage.supports(Capability.ROLLUPS):
            raise TrafficUnsupported(missing_sentence(self._storage, Capability.ROLLUPS), "rollups")
        self.ensure_ready()
        return self._storage.traffic(since_us, until_us, bucket_seconds)

    def state(self, since: TimeLike = None, until: TimeLike = None) -> dict[str, Any]:
        """The state at a glance, as one JSON-able dict (the STATE tab, ``/api/state``,
        ``leza status``): traffic, endpoints, who is on, services, the recorder's
        health and the latest advisories of the window (docs/dashboard.md).

        ``since``/``until`` as for the other reads (inclusive); default: the 24
        hours up to ``until``, itself by default now. ValueError (a
        :class:`~leza_middleware.state.build.WindowError` naming ``from``) when
        ``since`` is after ``until`` or the window is over 400 days.
        """
        from .state.build import build_state, state_window

        now = time_us()
        since_us, until_us = state_window(to_us(since), to_us(until, end=True), now)
        self.ensure_ready()
        return build_state(self._storage, since_us, until_us, now=now, live=self.live)

    def logs(
        self,
        since: TimeLike = None,
        until: TimeLike = None,
        action: str | None = None,
        performer_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> list[dict[str, Any]]:
        """The app's log records (LOG tab), newest first; ``action`` is the level
        name (``"error"``, ``"warning"``, …)."""
        return self._items("log", since, until, action, performer_id, limit, cursor)

    def advisories(
        self,
        since: TimeLike = None,
        until: TimeLike = None,
        action: str | None = None,
        performer_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> list[dict[str, Any]]:
        """Security advisories (ADVISORY tab), newest first; ``action`` is the rule
        name (``"new_machine"``, ``"impossible_travel"``, …)."""
        return self._items("advisory", since, until, action, performer_id, limit, cursor)

    def checks(
        self,
        since: TimeLike = None,
        until: TimeLike = None,
        action: str | None = None,
        check: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> list[dict[str, Any]]:
        """Availability probe results, newest first; ``action="state_change"`` for
        the moments a check went down or came back, ``check`` for one check."""
        return self._items("check", since, until, action, check, limit, cursor)
