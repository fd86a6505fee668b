"""STATE's services board: each availability check's state, uptime and incidents,
read from the stored ``check`` events alone (no running monitor needed).

What is read, bounded whatever the history holds:

* the check names: those a running monitor has registered, and those with a
  stored probe (SQL: a skip scan of the ``(check_name, ts)`` index, one seek
  per name);
* the state changes (``action="state_change"``) of the last 30 days or of the
  window, whichever starts earlier: at most :data:`MAX_CHANGES` of them, the
  newest (an outage is two rows, so that is thousands of outages);
* per check, the state it was in before them (the latest state change, else
  the latest probe, before that time) and its latest probe;
* per check, the latency sparkline: :data:`SLOTS` slots over the window, each
  the mean of its newest :data:`SAMPLES` probes (SQL: one statement of one
  index seek per slot).

From those: the state and since when, the last latency, uptime over 24 h /
7 d / 30 d as the share of the time the check was UP among the time it was
UP or DOWN (time in ``unknown``, before its first probe, is not counted; a
gap in probing counts as the state before it), and the window's incidents:
each stretch DOWN that overlaps it, with its start, its recovery (None while
still down) and its duration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..availability.uptime import WINDOWS, last_result
from ..events import CheckEvent, iso_from_us
from ..storage.base import QueryFilter, Storage

if TYPE_CHECKING:
    from .build import Live

__all__ = [
    "MAX_CHANGES",
    "MAX_CHECKS",
    "SAMPLES",
    "SLOTS",
    "Change",
    "CheckReads",
    "Probe",
    "incidents",
    "services",
    "slots_of",
    "uptime_share",
]

#: Most state changes read (the newest); past it, older ones are left out.
MAX_CHANGES = 20_000
#: Slots of a latency sparkline, and probes averaged per slot (the newest).
SLOTS = 48
SAMPLES = 3
#: Most checks listed.
MAX_CHECKS = 100
#: Most probes read per check for a sparkline by a backend without the SQL path.
MAX_PROBES = 5_000
_US = 1_000_000
MINUTE = 60 * _US


#: A probe as a sparkline shows it: (time µs, latency ms, passed).
Probe = tuple[int, float | None, bool]


@dataclass(frozen=True, slots=True)
class Change:
    """The moment a check entered ``state`` (µs), and the error that brought it there."""

    ts: int
    state: str
    error: str | None = None


# --------------------------------------------------------------------------- pure logic


def timeline(initial: Change | None, changes: Iterable[Change]) -> list[Change]:
    """``initial`` then ``changes`` in time order, a repeated state folded into the first."""
    out: list[Change] = [] if initial is None else [initial]
    for c in sorted(changes, key=lambda c: c.ts):
        if out and c.ts < out[-1].ts:
            continue  # older than the initial state's start: already covered by it
        if out and out[-1].state == c.state:
            continue
        out.append(c)
    return out


def _segments(line: Sequence[Change], end: int) -> Iterable[tuple[int, int, Change]]:
    """``(start, stop, change)`` of each stretch of ``line``, the last one up to ``end``."""
    for i, c in enumerate(line):
        stop = line[i + 1].ts if i + 1 < len(line) else end
        if stop > c.ts:
            yield c.ts, stop, c


def uptime_share(line: Sequence[Change], a: int, b: int) -> float | None:
    """Share (0 to 1) of ``[a, b)`` the check was UP, among the time it was UP or
    DOWN; None when it was neither in that time."""
    up = down = 0
    for start, stop, c in _segments(line, b):
        lo, hi = max(start, a), min(stop, b)
        if hi <= lo:
            continue
        if c.state == "up":
            up += hi - lo
        elif c.state == "down":
            down += hi - lo
    if up + down == 0:
        return None
    return round(up / (up + down), 6)


def incidents(line: Sequence[Change], since: int, until: int, now: int) -> list[dict[str, Any]]:
    """The stretches DOWN overlapping ``[since, until]``, oldest first: when it went
    down, when it came back (None: still down at the last probe), how long."""
    out = []
    for i, c in enumerate(line):
        if c.state != "down":
            continue
        nxt = line[i + 1] if i + 1 < len(line) else None
        end = None if nxt is None else nxt.ts
        if c.ts > until or (end is not None and end < since):
            continue
        out.append(
            {
                "down_at": iso_from_us(c.ts),
                "recovered_at": None if end is None else iso_from_us(end),
                "recovered_to": None if nxt is None else nxt.state,
                "duration_s": round(((now if end is None else end) - c.ts) / _US, 3),
                "ongoing": end is None,
                "error": c.error,
            }
        )
    return out


def slots_of(since: int, until: int, n: int = SLOTS) -> list[tuple[int, int]]:
    """``n`` equal ``[start, stop)`` slots covering ``[since, until]`` (fewer, of a
    minute at least, for a window under ``n`` minutes)."""
    span = until - since + 1
    n = max(1, min(n, span // MINUTE))
    size = -(-span // n)
    return [(since + i * size, min(since + (i + 1) * size, until + 1)) for i in range(n)]


# --------------------------------------------------------------------------- reads


class CheckReads:
    """The reads the board needs, through the storage's query API (any backend).

    Bounded: at most :data:`MAX_CHANGES` state changes, one row per check for its
    state before them and its latest probe, and :data:`MAX_PROBES` probes per
    check for its sparkline. ``storage/sql_state.py`` answers the names and the
    sparklines with index seeks instead.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def names(self, since: int) -> list[str]:
        """Checks with a stored probe at or after ``since`` (µs): those among the
        newest 1,000 probes and the state changes; at most :data:`MAX_CHECKS`."""
        page = self.storage.query("check", QueryFilter(since=since, limit=1000))
        return sorted({e.check for e in page.events})[:MAX_CHECKS]

    def changes(self, since: int, until: int) -> list[CheckEvent]:
        """State changes of every check in ``[since, until]``, oldest first (the
        newest :data:`MAX_CHANGES`)."""
        out: list[CheckEvent] = []
        cursor: tuple[int, str] | None = None
        while len(out) < MAX_CHANGES:
            flt = QueryFilter(
                since=since,
                until=until,
                action="state_change",
                limit=min(5000, MAX_CHANGES - len(out)),
                cursor=cursor,
            )
            page = self.storage.query("check", flt)
            out.extend(e for e in page.events if isinstance(e, CheckEvent))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        out.reverse()
        return out

    def before(self, name: str, ts: int) -> CheckEvent | None:
        """The state ``name`` was in just before ``ts``: its latest state change before
        it (whose time is when that state began), else its latest probe before it."""
        for action in ("state_change", None):
            found = self._latest(name, ts, action)
            if found is not None:
                return found
        return None

    def _latest(self, name: str, ts: int, action: str | None) -> CheckEvent | None:
        page = self.storage.query(
            "check", QueryFilter(until=ts - 1, action=action, performer_id=name, limit=1)
        )
        found = page.events[0] if page.events else None
        return found if isinstance(found, CheckEvent) else None

    def last(self, name: str) -> CheckEvent | None:
        return last_result(self.storage, name)

    def samples(self, name: str, slots: Sequence[tuple[int, int]]) -> list[list[Probe]]:
        """For each slot, up to :data:`SAMPLES` of its newest probes of ``name``."""
        if not slots:
            return []
        flt = QueryFilter(
            since=slots[0][0], until=slots[-1][1] - 1, performer_id=name, limit=MAX_PROBES
        )
        probes = [e for e in self.storage.query("check", flt).events if isinstance(e, CheckEvent)]
        out: list[list[Probe]] = [[] for _ in slots]
        first, size = slots[0][0], slots[0][1] - slots[0][0]
        for e in probes:  # newest first
            i = min((e.ts - first) // size, len(slots) - 1)
            if i >= 0 and len(out[i]) < SAMPLES:
                out[i].append((e.ts, e.latency_ms, e.ok))
        return out


def reads_for(storage: Storage) -> CheckReads:
    """The SQL reads for a SQL storage, the generic ones otherwise."""
    from ..storage import backend_of, is_sql

    checks = backend_of(storage, "check")
    if is_sql(checks):
        from ..storage.sql_state import SQLCheckReads

        return SQLCheckReads(checks)
    return CheckReads(storage)


# --------------------------------------------------------------------------- the board


def _change(e: CheckEvent) -> Change:
    return Change(e.ts, e.state, e.error if e.state == "down" else None)


def _sparkline(samples: list[list[Probe]], slots: Sequence[tuple[int, int]]) -> list[Any]:
    out = []
    for (start, _stop), probes in zip(slots, samples, strict=True):
        latencies = [ms for _ts, ms, _ok in probes if ms is not None]
        out.append(
            {
                "at": iso_from_us(start),
                "latency_ms": round(sum(latencies) / len(latencies), 3) if latencies else None,
                "ok": None if not probes else all(ok for _ts, _ms, ok in probes),
            }
        )
    return out


def services(
    storage: Storage, since: int, until: int, now: int, live: Live | None = None
) -> list[dict[str, Any]]:
    """One entry per check (see the module documentation), by name."""
    reads = reads_for(storage)
    month = now - WINDOWS["30d"] * _US
    lower = min(since, month)
    monitor = None if live is None else live.monitor
    registered = [] if monitor is None else [c.name for c in monitor.checks()]
    changes = reads.changes(lower, max(until, now))
    stored = reads.names(lower)
    names = sorted({*registered, *stored, *(e.check for e in changes)})[:MAX_CHECKS]
    by_check: dict[str, list[Change]] = {}
    for e in changes:
        by_check.setdefault(e.check, []).append(_change(e))
    slots = slots_of(since, until)
    out = []
    for name in names:
        last = reads.last(name)
        state = "unknown" if last is None else last.state
        local = None if monitor is None else monitor.local_state(name)
        local_since = None
        if local is not None:  # this process runs the checks: its view is the freshest
            state, fresh, local_since = local
            last = fresh or last
        first = by_check.get(name, [])
        initial = reads.before(name, first[0].ts if first else lower)
        line = timeline(None if initial is None else _change(initial), first)
        if (
            last is not None
            and (not line or line[-1].state != last.state)
            and (not line or last.ts >= line[-1].ts)
        ):
            # The newest probe's state is not a stored change (one written by a
            # monitor that went on from a stored state): it holds since that probe.
            line.append(Change(last.ts, last.state, last.error if last.state == "down" else None))
        # Uptime counts the time up to the newest probe: past it nothing is known.
        known_until = now if last is None else min(now, max(last.ts, line[-1].ts if line else 0))
        began = line[-1].ts if line and line[-1].state == state else local_since
        entry: dict[str, Any] = {
            "name": name,
            "state": state,
            "since": None if began is None else iso_from_us(began),
            "latency_ms": None if last is None else last.latency_ms,
            "last_checked": None if last is None else iso_from_us(last.ts),
            "error": None if last is None or last.ok else last.error,
            "uptime": {
                label: uptime_share(line, now - seconds * _US, known_until + 1)
                for label, seconds in WINDOWS.items()
            },
            "incidents": incidents(line, since, until, now),
            "latency_series": _sparkline(reads.samples(name, slots), slots),
            "registered": name in registered,
        }
        if monitor is not None and name in registered and monitor.silenced(name, now):
            entry["checked_state"] = state
            entry["state"] = "maintenance"
        out.append(entry)
    return out
