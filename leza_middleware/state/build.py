"""One STATE, as a JSON-able dict: what ``leza.query.state()``, ``/api/state``, the
STATE tab and ``leza status`` all show (docs/dashboard.md describes the keys).

Built from storage alone, so the command line (no running app) sees what the
app's own admin view sees: traffic from the rollups (``storage.traffic()``),
"who is on" from the sessions (:mod:`.who`), the services board from the
stored check events (:mod:`.services`), the latest advisories, and the
newest stored event of each kind. A :class:`~leza_middleware.Leza` that is
recording in this process adds its recorder's counters and its monitor's
view of the checks (fresher, and maintenance windows).

A backend without rollups (no ``rollups`` capability: JSON Lines, most custom
backends) gets everything but the traffic: ``traffic`` says why, and the
traffic numbers are None.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..events import SEVERITIES, AdvisoryEvent, iso_from_us
from ..storage.base import QueryFilter, Storage
from ..storage.capabilities import Capability
from .services import services
from .traffic import DAY, HOUR, TrafficCounts, bucket_seconds_for
from .who import who_is_on

if TYPE_CHECKING:
    from ..availability.monitor import Monitor
    from ..recorder import Recorder

__all__ = [
    "KINDS",
    "MAX_DAYS",
    "NO_ROLLUPS",
    "TOP_ADVISORIES",
    "Live",
    "WindowError",
    "build_state",
    "state_window",
]

log = logging.getLogger("leza_middleware")

#: The longest window STATE reads (rollups are kept 400 days by default).
MAX_DAYS = 400
#: Advisories shown, and how many of the window's newest are ranked for them.
TOP_ADVISORIES = 10
ADVISORY_SCAN = 1000
#: The kinds whose newest stored event the recorder section gives.
KINDS = ("access", "session", "audit", "log", "advisory", "check")
#: What a backend without rollups gets instead of traffic.
NO_ROLLUPS = (
    "Traffic needs a storage backend that keeps rollups (SQL or memory; the 'rollups' "
    "capability, docs/storage.md#capabilities); {storage} keeps none."
)


class WindowError(ValueError):
    """A window STATE cannot show; ``field`` is the bound to blame (``from``), the
    message says why without naming it (each caller names its own parameter)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def state_window(since: int | None, until: int | None, now: int) -> tuple[int, int]:
    """The window (µs, inclusive) of ``since``/``until``: by default the 24 hours up to
    ``until`` (itself by default now). Raises :class:`WindowError` when ``since``
    is after ``until`` or the window is longer than :data:`MAX_DAYS` days."""
    end = now if until is None else until
    start = end - DAY if since is None else since
    if start > end:
        raise WindowError(
            "from", f"the start ({iso_from_us(start)}) is after the end ({iso_from_us(end)})"
        )
    if end - start > MAX_DAYS * DAY:
        raise WindowError("from", f"the period is longer than {MAX_DAYS} days; start it later")
    return start, end


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _latency(c: TrafficCounts) -> dict[str, float | None]:
    return {k: _ms(v) for k, v in c.latency_ms().items()}


def _counts(c: TrafficCounts) -> dict[str, int]:
    return {
        "requests": c.requests,
        "server_errors": c.server_errors,
        "client_errors": c.client_errors,
        "denied": c.denied,
    }


def _traffic(storage: Storage, since: int, until: int, bucket: int) -> dict[str, Any]:
    if not storage.supports(Capability.ROLLUPS):
        return {
            "traffic": {"kept": False, "note": NO_ROLLUPS.format(storage=storage.describe())},
            "requests": None,
            "server_errors": None,
            "client_errors": None,
            "denied": None,
            "latency_ms": {"p50": None, "p95": None, "p99": None},
            "series": [],
            "endpoints": [],
            "logins": None,
            "login_failures": None,
        }
    t = storage.traffic(since, until, bucket)
    totals = t.totals
    return {
        "traffic": {"kept": True, "note": None},
        **_counts(totals),
        "latency_ms": _latency(totals),
        "series": [{"at": iso_from_us(at), **_counts(c)} for at, c in t.series],
        "endpoints": [
            {
                "method": e.method,
                "route": e.route,
                "endpoint": e.endpoint,
                "requests": e.counts.requests,
                "server_errors": e.counts.server_errors,
                "denied": e.counts.denied,
                "latency_ms": _latency(e.counts),
                "last_seen": iso_from_us(e.last_seen_us),
            }
            for e in t.endpoints
        ],
        "logins": totals.logins,
        "login_failures": totals.login_failures,
    }


def _count(storage: Storage, action: str, since: int, until: int) -> int | None:
    """Logins without rollups: a count of the access events (None if it cannot)."""
    if not storage.supports(Capability.COUNT):
        return None
    try:
        return storage.count("access", QueryFilter(since=since, until=until, action=action))
    except (NotImplementedError, ValueError):
        return None


def _newest(storage: Storage, kind: str) -> str | None:
    if not storage.stores(kind):
        return None
    try:
        page = storage.query(kind, QueryFilter(limit=1))
    except (NotImplementedError, ValueError):
        return None
    return iso_from_us(page.events[0].ts) if page.events else None


def _spill(directory: str) -> tuple[int, int]:
    """Spill files waiting in ``directory`` and their bytes (0, 0 when there is none)."""
    files = size = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("spill-") and entry.name.endswith(".jsonl"):
                    files += 1
                    size += entry.stat().st_size
    except OSError:
        pass  # no folder yet: nothing ever spilled
    return files, size


@dataclass(frozen=True)
class Live:
    """The running parts of this process STATE reports on: the recorder's
    counters and spill files, the monitor's registered checks (``leza.query.live``)."""

    recorder: Recorder
    monitor: Monitor | None = None


def recorder(storage: Storage, live: Live | None) -> dict[str, Any]:
    """The recorder's own health: this process's counters (when it records), the
    spill files waiting, and the time of the newest stored event of each kind."""
    out: dict[str, Any] = {
        "live": False,
        "written": None,
        "dropped": None,
        "dropped_by_reason": None,
        "pending": None,
        "spilled": None,
        "replayed": None,
        "storage_down": None,
        "spill_files": None,
        "spill_bytes": None,
    }
    if live is not None:
        stats = live.recorder.stats()
        if stats["enqueued"]:  # this process records: its counters mean something
            out.update(
                {
                    k: stats[k]
                    for k in (
                        "written",
                        "dropped",
                        "dropped_by_reason",
                        "pending",
                        "spilled",
                        "replayed",
                        "storage_down",
                    )
                },
                live=True,
            )
        out["spill_files"], out["spill_bytes"] = _spill(str(live.recorder.spill.directory))
    out["newest"] = {kind: _newest(storage, kind) for kind in KINDS}
    return out


def advisories(storage: Storage, since: int, until: int) -> list[dict[str, Any]]:
    """The :data:`TOP_ADVISORIES` most severe of the window's newest
    :data:`ADVISORY_SCAN` advisories, most severe first, then newest first."""
    if not storage.stores("advisory"):
        return []
    page = storage.query("advisory", QueryFilter(since=since, until=until, limit=ADVISORY_SCAN))
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    found = [e for e in page.events if isinstance(e, AdvisoryEvent)]
    found.sort(key=lambda e: (-rank.get(e.severity, 0), -e.ts, e.id))
    return [e.to_dict() for e in found[:TOP_ADVISORIES]]


_T = TypeVar("_T")


def _part(what: str, read: Callable[[], _T], fallback: _T, storage: Storage) -> _T:
    """One section, or ``fallback`` when the backend cannot answer it (a custom
    backend without a place for sessions or checks raises NotImplementedError or
    ValueError for that kind): the rest of STATE still shows."""
    try:
        return read()
    except (NotImplementedError, ValueError) as exc:
        log.debug("leza: STATE without %s: %s cannot read them: %s", what, storage.describe(), exc)
        return fallback


def build_state(
    storage: Storage, since: int, until: int, *, now: int, live: Live | None = None
) -> dict[str, Any]:
    """The state of ``[since, until]`` (µs, inclusive; see :func:`state_window`)."""
    bucket = bucket_seconds_for(since, until)
    if (
        bucket >= HOUR // 1_000_000
        and storage.supports(Capability.ROLLUPS)
        and (live is None or not live.recorder.stats()["enqueued"])
    ):
        # No recorder here sums past hours into hour rows each minute (the command
        # line, a dashboard on its own): do it now, or long windows read minutes.
        try:
            storage.settle_traffic(now)
        except Exception as exc:  # a read-only database: reads fall back to minutes
            log.debug("leza: traffic rollup upkeep before STATE failed: %s", exc)
    traffic = _traffic(storage, since, until, bucket)
    nobody = {"active": 0, "by_country": [], "by_device": [], "performers": 0, "capped": False}
    who = _part("sessions", lambda: who_is_on(storage, since, until), nobody, storage)
    logins, failures = traffic.pop("logins"), traffic.pop("login_failures")
    if not storage.supports(Capability.ROLLUPS):
        logins = _count(storage, "login", since, until)
        failures = _count(storage, "login_failed", since, until)
    none: list[dict[str, Any]] = []
    state: dict[str, Any] = {
        "from": iso_from_us(since),
        "to": iso_from_us(until),
        "bucket": bucket,
        "generated_at": iso_from_us(now),
        **traffic,
        "sessions": {**who, "logins": logins, "login_failures": failures},
        "services": _part(
            "services", lambda: services(storage, since, until, now, live), none, storage
        ),
        "recorder": recorder(storage, live),
        "advisories": _part(
            "advisories", lambda: advisories(storage, since, until), list(none), storage
        ),
    }
    return state
