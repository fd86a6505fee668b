"""The recorder-side half: prepared events → Prometheus metrics, on the recorder thread.

Nothing here runs on a request. :class:`LezaMetrics` is a recorder observer
(``Recorder.add_observer``): it gets each batch of prepared events, groups the
access events by method + route + outcome, and applies one increment per group
and applies one increment per group and histogram bucket at the end of a round
of batches, at most every half second (a Prometheus value write costs about a
microsecond, more in multiprocess mode, where it is an mmap write under a lock:
per event it would cost more than the recorder's other work;
bench/bench_metrics.py). The recorder's own counters are brought up to date
at the same time; check results set the check gauges at once.

Labels are bounded whatever the traffic: a request without a route template
(a 404 scan, a bare ASGI app) is ``route="(unmatched)"``, routes past
``max_routes`` distinct templates are ``"(other)"``, and methods outside the
standard set are ``"OTHER"``.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from ..errors import LezaConfigError
from ..events import AccessEvent, CheckEvent, Event
from ..state.labels import (
    METHODS,
    OTHER_METHOD,
    UNMATCHED_ROUTE,
    method_label,
    outcome_index,
    route_label,
)

if TYPE_CHECKING:
    from ..leza import Leza
    from ..recorder import Recorder

__all__ = [
    "DEFAULT_BUCKETS",
    "METHODS",
    "OTHER_METHOD",
    "OTHER_ROUTE",
    "OUTCOMES",
    "UNMATCHED",
    "LezaMetrics",
    "outcome_of",
    "register",
]

log = logging.getLogger("leza_middleware")

#: Prometheus' own default latency buckets, in seconds (+Inf is added).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
#: The route label of requests no route matched (``state.labels.UNMATCHED_ROUTE``).
UNMATCHED = UNMATCHED_ROUTE
#: The route label of the templates past ``max_routes``.
OTHER_ROUTE = "(other)"
#: The outcome label's values, mutually exclusive, in the order of
#: ``state.labels``' outcome indexes (SUCCESS … DENIED): STATE's rollups and
#: these metrics count every request under the same outcome.
OUTCOMES = ("success", "client_error", "server_error", "denied")
_LABEL_CACHE = 4096  # raw (method, route) pairs remembered; cleared when full
# Held events are applied at the end of a round of batches at most this often
# (seconds): under load one apply covers many batches, whose groups repeat.
_APPLY_INTERVAL = 0.5
# Events held before they are applied anyway, in a round of batches that does not end.
_APPLY_EVERY = 8192
_RECORDER_COUNTERS = ("enqueued", "written", "spilled", "replayed", "storage_errors")


def outcome_of(outcome: str, status: int | None) -> str:
    """The outcome label of an access event from its stored ``outcome`` and
    status: the rule STATE's rollups use (:func:`..state.labels.outcome_index`)."""
    return OUTCOMES[outcome_index(outcome, status) - 1]


class _Instruments:
    """The metric objects of one registry, shared by every Leza registered in it."""

    def __init__(self, registry: CollectorRegistry, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.bounds = (*buckets, math.inf)
        http = ("app", "method", "route", "outcome")
        self.requests = Counter(
            "leza_http_requests",
            "HTTP requests recorded by leza, by method, route template and outcome.",
            http,
            registry=registry,
        )
        self.duration = Histogram(
            "leza_http_request_duration_seconds",
            "Time from the request's arrival to its response's end, as recorded by leza.",
            http,
            buckets=buckets,
            registry=registry,
        )
        # Only the monitor's leader process sets these: in multiprocess mode the
        # newest value of a live process wins.
        check = ("app", "check")
        self.check_up = Gauge(
            "leza_check_up",
            "1 when the availability check is UP, 0 when DOWN (absent until known).",
            check,
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.check_latency = Gauge(
            "leza_check_latency_seconds",
            "Latency of the check's last probe.",
            check,
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.check_probe = Gauge(
            "leza_check_last_probe_timestamp_seconds",
            "When the check was last probed (Unix time).",
            check,
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.recorder = {
            name: Counter(
                f"leza_recorder_events_{name}" if name != "storage_errors" else
                "leza_recorder_storage_errors",
                text,
                ("app",),
                registry=registry,
            )
            for name, text in (
                ("enqueued", "Events offered to leza's recorder."),
                ("written", "Events written to storage."),
                ("spilled", "Events spilled to the local file while storage was failing."),
                ("replayed", "Spilled events written to storage later."),
                ("storage_errors", "Failed storage writes and reads (retried, then spilled)."),
            )
        }  # fmt: skip
        self.dropped = Counter(
            "leza_recorder_events_dropped",
            "Events dropped, by reason (queue_full, invalid, unstorable, spill_failed, ...).",
            ("app", "reason"),
            registry=registry,
        )
        self.pending = Gauge(
            "leza_recorder_events_pending",
            "Events queued or being written now.",
            ("app",),
            registry=registry,
            multiprocess_mode="livesum",
        )


_lock = threading.Lock()
_instruments: weakref.WeakKeyDictionary[CollectorRegistry, _Instruments] = (
    weakref.WeakKeyDictionary()
)
# (a Leza's recorder, registry) → its LezaMetrics; weak on both sides.
_feeds: weakref.WeakKeyDictionary[Recorder, dict[int, LezaMetrics]] = weakref.WeakKeyDictionary()
_live: weakref.WeakSet[LezaMetrics] = weakref.WeakSet()


def _check_buckets(buckets: Any) -> tuple[float, ...]:
    try:
        values = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise LezaConfigError(
            f"metrics buckets must be numbers of seconds, got {buckets!r}"
        ) from None
    if values and values[-1] == math.inf:
        values = values[:-1]  # +Inf is always added
    if (
        not values
        or any(not math.isfinite(b) or b <= 0 for b in values)
        or any(a >= b for a, b in itertools.pairwise(values))
    ):
        raise LezaConfigError(
            f"metrics buckets must be increasing numbers of seconds > 0, got {buckets!r}"
        )
    return values


def register(
    leza: Leza,
    registry: CollectorRegistry | None = None,
    *,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
    max_routes: int = 500,
) -> LezaMetrics:
    """Feed ``leza``'s metrics into ``registry`` (default: prometheus_client's ``REGISTRY``).

    Returns the :class:`LezaMetrics`; calling it again for the same Leza and
    registry returns the same one. ``buckets``: the latency histogram's upper
    bounds in seconds (one set per registry). ``max_routes``: distinct route
    templates labelled as themselves; more are counted as ``route="(other)"``.
    """
    if isinstance(max_routes, bool) or not isinstance(max_routes, int) or max_routes < 1:
        raise LezaConfigError(f"metrics max_routes must be an int >= 1, got {max_routes!r}")
    bounds = _check_buckets(buckets)
    target = REGISTRY if registry is None else registry
    if not isinstance(target, CollectorRegistry):
        raise LezaConfigError(
            f"metrics registry must be a prometheus_client CollectorRegistry, "
            f"got {type(target).__name__}"
        )
    recorder, app_name = leza.recorder, leza.settings.app_name
    with _lock:
        mine = _feeds.setdefault(recorder, {})
        feed = mine.get(id(target))
        if feed is not None and feed.registry is target:
            if feed.instruments.buckets != bounds or feed.max_routes != max_routes:
                raise LezaConfigError(
                    "metrics: this Leza is already registered in this registry with other "
                    "buckets or max_routes"
                )
            return feed
        instruments = _instruments.get(target)
        if instruments is None:
            try:
                instruments = _Instruments(target, bounds)
            except ValueError as exc:  # our names are taken in that registry
                raise LezaConfigError(
                    f"metrics: cannot register leza's metrics in this registry: {exc}"
                ) from None
            _instruments[target] = instruments
        elif instruments.buckets != bounds:
            raise LezaConfigError(
                f"metrics: this registry already has leza's latency histogram with buckets "
                f"{instruments.buckets}; every Leza in one registry shares them"
            )
        feed = LezaMetrics(recorder, app_name, target, instruments, max_routes)
        mine[id(target)] = feed
    recorder.add_observer(feed)
    return feed


class LezaMetrics:
    """One Leza's feed into one registry's metrics (made by :func:`register`).

    Called by the recorder thread (``Recorder.add_observer``) with each batch of
    prepared events, and with no events after each round of batches.
    """

    def __init__(
        self,
        recorder: Recorder,
        app_name: str,
        registry: CollectorRegistry,
        instruments: _Instruments,
        max_routes: int,
    ) -> None:
        # Weakly: the recorder holds this feed (an observer), not the other way round.
        self._recorder = weakref.ref(recorder)
        self.app_name = app_name
        self.registry = registry
        self.instruments = instruments
        self.max_routes = max_routes
        self._labels: dict[tuple[str, str | None], tuple[str, str]] = {}
        self._routes: set[str] = set()
        self._http: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._checks: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._up: dict[tuple[str, str], Any] = {}
        self._last: dict[tuple[str, str], int] = {}  # recorder counters as last applied
        self._fast: bool | None = None  # histogram children take whole buckets at once
        # Access events counted but not applied yet, grouped by (method, route,
        # outcome) → durations (µs): applied at the end of each round of batches.
        self._pending: dict[tuple[str, str | None, str], list[int]] = {}
        self._held = 0
        self._applied_at = -_APPLY_INTERVAL
        #: Requests whose route template was counted as ``(other)`` (past ``max_routes``).
        self.routes_overflowed = 0
        _live.add(self)

    def __repr__(self) -> str:
        return f"<LezaMetrics routes={len(self._routes)} max_routes={self.max_routes}>"

    # -- the recorder thread -----------------------------------------------------

    def __call__(self, events: Sequence[Event]) -> None:
        recorder = self._recorder()
        if recorder is None:
            return
        app = self.app_name
        if not events:  # the end of a round of batches
            now = time.monotonic()
            if now - self._applied_at >= _APPLY_INTERVAL:
                self._applied_at = now
                self._apply(app)
                self._sync_recorder(recorder, app)
            return
        groups = self._pending
        checks: list[CheckEvent] = []
        for event in events:
            if type(event) is AccessEvent:
                row = event.row
                key = (row[3], row[5], OUTCOMES[outcome_index(row[8], row[6]) - 1])
                durations = groups.get(key)
                if durations is None:
                    groups[key] = [row[7]]
                else:
                    durations.append(row[7])
            elif type(event) is CheckEvent:
                checks.append(event)
        for check in checks:
            self._set_check(app, check)
        self._held += len(events)
        if self._held >= _APPLY_EVERY:  # a round that does not end (sustained load)
            self._apply(app)

    def _apply(self, app: str) -> None:
        groups = self._pending
        if not groups:
            return
        self._pending = {}
        self._held = 0
        for (method, route, outcome), durations in groups.items():
            self._count(app, method, route, outcome, durations)

    def _label(self, method: str, route: str | None) -> tuple[str, str]:
        labels = self._labels.get((method, route))
        if labels is not None:
            return labels
        m = method_label(method)
        r = route_label(route)
        if r != UNMATCHED_ROUTE:
            if not r.isascii():  # a lone surrogate would break the exposition's UTF-8
                r = r.encode("utf-8", "replace").decode("utf-8")
            if r not in self._routes:
                if len(self._routes) >= self.max_routes:
                    if not self.routes_overflowed:
                        log.warning(
                            "leza: metrics: more than %d route templates; the others are "
                            "counted as route=%r (metrics max_routes)",
                            self.max_routes,
                            OTHER_ROUTE,
                        )
                    r = OTHER_ROUTE
                else:
                    self._routes.add(r)
        if len(self._labels) >= _LABEL_CACHE:
            self._labels.clear()
        labels = self._labels[(method, route)] = (m, r)
        return labels

    def _count(
        self, app: str, method: str, route: str | None, outcome: str, durations: list[int]
    ) -> None:
        m, r = self._label(method, route)
        if r == OTHER_ROUTE and route is not None:
            self.routes_overflowed += len(durations)
        key = (app, m, r, outcome)
        children = self._http.get(key)
        if children is None:
            inst = self.instruments
            children = self._http[key] = (
                inst.requests.labels(app, m, r, outcome),
                inst.duration.labels(app, m, r, outcome),
            )
        requests, histogram = children
        requests.inc(len(durations))
        if self._fast is None:
            buckets = getattr(histogram, "_buckets", None)
            self._fast = (
                isinstance(buckets, list)
                and len(buckets) == len(self.instruments.bounds)
                and callable(getattr(getattr(histogram, "_sum", None), "inc", None))
            )
        if not self._fast:  # a prometheus_client whose histogram we do not know
            for us in durations:
                histogram.observe(us / 1_000_000)
            return
        # One write per bucket touched instead of one per event, with exactly
        # what observe() would have counted.
        bounds = self.instruments.bounds
        counts = [0] * len(bounds)
        for us in durations:
            counts[bisect_left(bounds, us / 1_000_000)] += 1
        histogram._sum.inc(sum(durations) / 1_000_000)
        cells = histogram._buckets
        for i, n in enumerate(counts):
            if n:
                cells[i].inc(n)

    def _set_check(self, app: str, event: CheckEvent) -> None:
        key = (app, event.check)
        children = self._checks.get(key)
        inst = self.instruments
        if children is None:
            children = self._checks[key] = (
                inst.check_latency.labels(app, event.check),
                inst.check_probe.labels(app, event.check),
            )
        latency, probed = children
        if event.state in ("up", "down"):
            # Made on the first known state: a child exists with 0 (DOWN) from birth.
            up = self._up.get(key)
            if up is None:
                up = self._up[key] = inst.check_up.labels(app, event.check)
            up.set(1 if event.state == "up" else 0)
        if event.latency_ms is not None:
            latency.set(event.latency_ms / 1000)
        probed.set(event.ts / 1_000_000)

    def _sync_recorder(self, recorder: Recorder, app: str) -> None:
        """Bring the recorder's counters over: add what they grew by since last time."""
        stats = recorder.stats()
        inst = self.instruments
        last = self._last
        for name in _RECORDER_COUNTERS:
            self._advance(inst.recorder[name], (app,), ("", name), int(stats[name]), last)
        for reason, n in stats["dropped_by_reason"].items():
            self._advance(inst.dropped, (app, reason), (reason, "dropped"), int(n), last)
        inst.pending.labels(app).set(stats["pending"])

    @staticmethod
    def _advance(
        counter: Counter,
        labels: tuple[str, ...],
        key: tuple[str, str],
        value: int,
        last: dict[tuple[str, str], int],
    ) -> None:
        before = last.get(key, 0)
        # Lower than before: the counters restarted from 0 (a forked child's recorder).
        grew = value - before if value >= before else value
        if grew:
            counter.labels(*labels).inc(grew)
        last[key] = value

    def after_fork(self) -> None:
        """In a forked child: start from zero like its recorder."""
        # The child's recorder starts from zero; so do its counters (multiprocess
        # mode: its own files), so nothing of the parent's is carried over.
        self._last = {}
        self._pending = {}
        self._held = 0
        self._applied_at = -_APPLY_INTERVAL


def _after_fork_in_child() -> None:
    for feed in list(_live):
        feed.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
