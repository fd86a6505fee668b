"""What the advisory rules remember about each performer, across restarts and workers.

A rule such as "login from a new machine" needs the performer's past logins,
and a process that just started (or a worker that never saw this performer)
has none in memory. :class:`History` keeps one :class:`PerformerState` per
performer, built lazily the first time a rule asks about that performer:

* **hydration** reads the performer's ``login`` access events of the last
  ``days`` days from storage once (newest first, paging with the cursor, at
  most ``max_events`` rows) and folds them in;
* as events flow, the engine folds each login (and each session start, for
  locations) into the state, so the next event is judged against it;
* a state is **refreshed** from storage every ``refresh`` seconds (the logins
  other workers wrote meanwhile); folding is idempotent by event id, so an
  event read twice — or one of the current batch that storage already holds —
  is never counted twice;
* memory is bounded: at most ``max_performers`` states (least recently used
  evicted first; an evicted performer is hydrated again when next seen), and
  per state at most ``max_ids`` remembered event ids and ``max_machines``
  machine ids.

A storage failure during hydration never raises: the state is then judged
from what this process saw itself (hydration is retried after ``retry_after``
seconds), and the failure is logged at most once a minute and counted.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Container
from typing import Any, NamedTuple

from ..errors import LezaConfigError
from ..events import AccessEvent, Event, Geo, SessionEvent
from ..storage.base import QueryFilter, Storage

__all__ = ["History", "Location", "PerformerState", "location_of", "place_label"]

log = logging.getLogger("leza_middleware.advisories")

_DAY_US = 86_400_000_000
#: How far before the last hydration a refresh reads again: events other
#: workers recorded just before it may have been written just after it.
REFRESH_MARGIN_S = 120.0
#: A hydration slower than this many seconds backs off like a failure does:
#: the recorder thread must not keep waiting on a struggling storage.
SLOW_HYDRATION_S = 2.0
_LOG_EVERY_S = 60.0


class Location(NamedTuple):
    """Where and when a performer was seen (a login or a session start)."""

    ts: int  # µs since the epoch, UTC
    latitude: float
    longitude: float
    label: str  # "Berlin, DE"
    event_id: str


def place_label(geo: Geo | None) -> str:
    """A short human name of a place: ``"Berlin, DE"``, ``"Germany"``, ``""``."""
    if geo is None:
        return ""
    if geo.city and geo.country_code:
        return f"{geo.city}, {geo.country_code}"
    if geo.city:
        return geo.city
    if geo.country_name:
        return geo.country_name
    if geo.country_code:
        return geo.country_code
    if geo.latitude is not None and geo.longitude is not None:
        return f"{geo.latitude:.2f}, {geo.longitude:.2f}"
    return ""


def location_of(event: Event) -> Location | None:
    """The location of a login or session start, when its geo has coordinates."""
    geo: Geo | None = getattr(event, "geo", None)
    if geo is None or geo.latitude is None or geo.longitude is None:
        return None
    return Location(event.ts, float(geo.latitude), float(geo.longitude), place_label(geo), event.id)


class PerformerState:
    """What is known about one performer's past logins.

    ``machines`` and ``countries`` map a machine id / country code to the
    last time (µs) it was seen in a login; ``last_location`` is the newest
    login or session start with coordinates; ``logins`` counts the distinct
    logins folded in. Folding is idempotent by event id (see :meth:`apply`).
    """

    __slots__ = (
        "_max_ids",
        "_max_machines",
        "countries",
        "hydrated_at",
        "ids",
        "last_location",
        "logins",
        "machines",
        "performer_id",
    )

    def __init__(self, performer_id: str, *, max_ids: int = 32, max_machines: int = 64) -> None:
        self.performer_id = performer_id
        self.ids: dict[str, None] = {}  # recent event ids folded in, oldest first
        self.logins = 0
        self.machines: dict[str, int] = {}
        self.countries: dict[str, int] = {}
        self.last_location: Location | None = None
        #: ``History`` clock time of the last successful hydration; None: never.
        self.hydrated_at: float | None = None
        self._max_ids = max_ids
        self._max_machines = max_machines

    def __repr__(self) -> str:
        return (
            f"PerformerState({self.performer_id!r}, logins={self.logins}, "
            f"machines={len(self.machines)}, countries={sorted(self.countries)})"
        )

    def seen(self, event_id: str) -> bool:
        """Whether the event with this id is already folded in (a replay)."""
        return event_id in self.ids

    def countries_since(self, ts_us: int) -> dict[str, int]:
        """Countries seen in a login at or after ``ts_us`` (code -> last seen, µs)."""
        return {code: seen for code, seen in self.countries.items() if seen >= ts_us}

    def apply(self, event: Event) -> bool:
        """Fold a ``login`` access event or a ``session_start`` in; False if already in.

        Logins update the machines, countries and last location; a session
        start only the last location (it says where, not how one signed in).
        """
        ids = self.ids
        event_id = event.id
        if event_id in ids:
            return False
        ids[event_id] = None
        if len(ids) > self._max_ids:
            del ids[next(iter(ids))]
        ts = event.ts
        if isinstance(event, AccessEvent):
            self.logins += 1
            machine = event.machine_id
            if machine:
                machines = self.machines
                machines[machine] = max(ts, machines.get(machine, ts))
                if len(machines) > self._max_machines:
                    del machines[min(machines, key=machines.__getitem__)]
            geo = event.geo
            if geo is not None and geo.country_code:
                code = geo.country_code
                self.countries[code] = max(ts, self.countries.get(code, ts))
                if len(self.countries) > self._max_machines:
                    del self.countries[min(self.countries, key=self.countries.__getitem__)]
        location = location_of(event)
        if location is not None and (
            self.last_location is None or location.ts >= self.last_location.ts
        ):
            self.last_location = location
        return True


def _check_number(name: str, value: Any, *, minimum: float, integer: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value >= minimum:
        raise LezaConfigError(f"History({name}=...) must be {kind} >= {minimum}, got {value!r}")


class History:
    """Per-performer login history for the advisory rules (see the module doc).

    ``storage`` may be None: then the history is what this process saw.
    ``clock`` (seconds, like :func:`time.time`) times refreshes and back-off.
    """

    def __init__(
        self,
        storage: Storage | None = None,
        *,
        days: float = 90.0,
        max_performers: int = 10_000,
        max_events: int = 1_000,
        page_size: int = 500,
        max_ids: int = 32,
        max_machines: int = 64,
        refresh: float | None = 300.0,
        retry_after: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_number("days", days, minimum=1 / 24)
        _check_number("max_performers", max_performers, minimum=1, integer=True)
        _check_number("max_events", max_events, minimum=1, integer=True)
        _check_number("page_size", page_size, minimum=1, integer=True)
        _check_number("max_ids", max_ids, minimum=1, integer=True)
        _check_number("max_machines", max_machines, minimum=1, integer=True)
        if refresh is not None:
            _check_number("refresh", refresh, minimum=1)
        _check_number("retry_after", retry_after, minimum=0)
        self.storage = storage
        self.days = float(days)
        self.max_performers = max_performers
        self.max_events = max_events
        self.page_size = page_size
        self.max_ids = max_ids
        self.max_machines = max_machines
        self.refresh = refresh
        self.retry_after = retry_after
        self.clock = clock
        self._states: OrderedDict[str, PerformerState] = OrderedDict()
        self._retry_at = 0.0  # no hydration before this clock time (storage failing)
        self._logged_at: float | None = None
        self.hydrations = 0
        self.hydration_errors = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, performer_id: object) -> bool:
        return performer_id in self._states

    def stats(self) -> dict[str, int]:
        return {
            "performers": len(self._states),
            "hydrations": self.hydrations,
            "hydration_errors": self.hydration_errors,
            "evictions": self.evictions,
        }

    def peek(self, performer_id: str) -> PerformerState | None:
        """The state in memory, if any: no hydration, no LRU bookkeeping."""
        return self._states.get(performer_id)

    def state(self, performer_id: str, ts_us: int, exclude: Container[str] = ()) -> PerformerState:
        """The state of one performer, hydrated from storage when due.

        ``ts_us`` is the time of the event being judged: hydration reads the
        ``days`` before it. Events whose id is in ``exclude`` (the batch being
        processed) are not folded in by hydration: they are judged and folded
        in order by the engine.
        """
        states = self._states
        st = states.get(performer_id)
        if st is None:
            st = PerformerState(performer_id, max_ids=self.max_ids, max_machines=self.max_machines)
            states[performer_id] = st
            while len(states) > self.max_performers:
                states.popitem(last=False)
                self.evictions += 1
        else:
            states.move_to_end(performer_id)
        if self.storage is not None and self._due(st):
            self._hydrate(st, ts_us, exclude)
        return st

    def record(self, event: Event, exclude: Container[str] = ()) -> bool:
        """Fold a login or session start of a known performer in; False if not one or known."""
        if isinstance(event, AccessEvent):
            if event.action != "login":
                return False
            performer_id = event.performer_id
        elif isinstance(event, SessionEvent):
            if event.action != "session_start" or event.performer is None:
                return False
            performer_id = event.performer.id
        else:
            return False
        if not performer_id:
            return False
        return self.state(performer_id, event.ts, exclude).apply(event)

    def clear(self) -> None:
        self._states.clear()

    # -- hydration

    def _due(self, st: PerformerState) -> bool:
        now = self.clock()
        if now < self._retry_at:
            return False
        if st.hydrated_at is None:
            return True
        return self.refresh is not None and now - st.hydrated_at >= self.refresh

    def _hydrate(self, st: PerformerState, ts_us: int, exclude: Container[str]) -> None:
        assert self.storage is not None
        started = self.clock()
        since = ts_us - int(self.days * _DAY_US)
        if st.hydrated_at is not None:  # a refresh: only what may be new since the last read
            since = max(since, int((st.hydrated_at - REFRESH_MARGIN_S) * 1_000_000))
        found: list[Event] = []
        try:
            cursor: tuple[int, str] | None = None
            while len(found) < self.max_events:
                flt = QueryFilter(
                    since=since,
                    action="login",
                    performer_id=st.performer_id,
                    limit=min(self.page_size, self.max_events - len(found)),
                    cursor=cursor,
                )
                page = self.storage.query("access", flt)
                found.extend(page.events)
                cursor = page.next_cursor
                if cursor is None:
                    break
        except Exception as exc:  # storage down: judge from memory, retry later
            self.hydration_errors += 1
            self._retry_at = self.clock() + self.retry_after
            self._log_failure(st.performer_id, exc)
            return
        self.hydrations += 1
        # Oldest first, so the remembered ids are the newest ones.
        for event in reversed(found):
            if (
                isinstance(event, AccessEvent)
                and event.action == "login"
                and event.performer_id == st.performer_id
                and event.id not in exclude
            ):
                st.apply(event)
        now = self.clock()
        st.hydrated_at = now
        if now - started > SLOW_HYDRATION_S:
            self._retry_at = now + self.retry_after

    def _log_failure(self, performer_id: str, exc: BaseException) -> None:
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < _LOG_EVERY_S:
            return
        self._logged_at = now
        log.warning(
            "advisories: could not read the login history of performer %r (%s: %s); "
            "judging from this process's memory, retrying in %.0f s "
            "(%d hydration failure(s) so far)",
            performer_id,
            type(exc).__name__,
            exc,
            self.retry_after,
            self.hydration_errors,
        )
