"""Traffic numbers read from rollups: the types STATE is built from.

A backend that keeps rollups (the ``rollups`` capability: SQL and memory)
answers ``storage.traffic(since_us, until_us, bucket_seconds)`` with a
:class:`Traffic`, computed from its per-minute and per-hour rollup rows,
never from the raw access rows, so its cost depends on the window and the
number of endpoints, not on how many events were stored.

Window
    Rollups have minute resolution. The window counted is every whole minute
    that the inclusive range ``[since_us, until_us]`` touches (the same
    inclusive bounds as the query filters): events with
    ``floor_minute(since_us) <= ts < floor_minute(until_us) + 60 s``.
    :attr:`Traffic.since_us` and :attr:`Traffic.until_us` report exactly that
    range, half-open.

Buckets
    ``bucket_seconds`` is a positive multiple of 60; buckets are aligned on
    the epoch (UTC): minutes, hours, UTC days. :func:`bucket_seconds_for`
    picks 60, 3600 or 86400 from the window's length. The series has every
    bucket that overlaps the window, in time order, empty ones included (zero
    counts); the first and last may be partly outside the window and then
    count only its part. At most :data:`MAX_BUCKETS` buckets.

Outcomes (mutually exclusive; see :func:`~leza_middleware.state.labels.outcome_index`)
    ``denied``: the access outcome ``denied`` (a permission denial, a refused
    revoked or logged-out session, a 401/403 answer); ``server_errors``:
    outcome ``error`` or a status >= 500 (or none: the app crashed);
    ``client_errors``: outcome ``failure`` (a 4xx answer not denied, and a
    failed login whatever its status) or another 4xx; ``success``: the rest.
    ``logins`` and ``login_failures`` count the actions ``login`` and
    ``login_failed`` among the requests (they are also in one of the four).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import add
from typing import ClassVar

from ..errors import StorageCapabilityError

__all__ = [
    "DAY",
    "HOUR",
    "LATENCY_BOUNDS_MS",
    "LATENCY_BOUNDS_US",
    "MAX_BUCKETS",
    "MINUTE",
    "EndpointTraffic",
    "Traffic",
    "TrafficCounts",
    "TrafficUnsupported",
    "bucket_seconds_for",
    "check_window",
]

MINUTE = 60_000_000  # µs
HOUR = 3_600_000_000
DAY = 86_400_000_000

#: Upper bounds (inclusive, in ms) of the latency histogram's buckets; the last
#: is infinity. Five per decade (x1.5-1.67 each), from 0.25 ms to 60 s: a
#: percentile read by interpolating inside its bucket is within that bucket,
#: i.e. within about ±25 % of the true value. Fixed: the rollup tables have one
#: column per bucket (``h00`` … ``h28``), changing them needs a migration.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.25, 0.4, 0.6,
    1.0, 1.5, 2.5, 4.0, 6.0,
    10.0, 15.0, 25.0, 40.0, 60.0,
    100.0, 150.0, 250.0, 400.0, 600.0,
    1_000.0, 1_500.0, 2_500.0, 4_000.0, 6_000.0,
    10_000.0, 15_000.0, 25_000.0, 40_000.0, 60_000.0,
    float("inf"),
)  # fmt: skip
#: The finite bounds in µs (what durations are stored in): a duration ``d`` goes
#: to bucket ``bisect_left(LATENCY_BOUNDS_US, d)``, so bucket ``i`` holds
#: ``LATENCY_BOUNDS_US[i-1] < d <= LATENCY_BOUNDS_US[i]``.
LATENCY_BOUNDS_US: tuple[int, ...] = tuple(round(b * 1000) for b in LATENCY_BOUNDS_MS[:-1])
N_BUCKETS = len(LATENCY_BOUNDS_MS)

#: Most buckets one :class:`Traffic` may have (7 days of minutes, 416 days of hours).
MAX_BUCKETS = 10_000
_STEPS = (60, 3600, 86400)


class TrafficUnsupported(StorageCapabilityError):
    """The storage keeps no rollups, so it cannot tell traffic (it does not declare
    the ``rollups`` capability: docs/storage.md#capabilities)."""


@dataclass(frozen=True, slots=True)
class TrafficCounts:
    """Request counts and latency of a set of requests (a bucket, an endpoint, a window).

    ``requests == success + client_errors + server_errors + denied``;
    ``histogram[i]`` counts the requests whose duration fell in the bucket
    whose upper bound is ``LATENCY_BOUNDS_MS[i]``, and sums to ``requests``.
    Counts add up: ``a + b`` is the counts of both sets.
    """

    requests: int = 0
    success: int = 0
    client_errors: int = 0
    server_errors: int = 0
    denied: int = 0
    logins: int = 0
    login_failures: int = 0
    duration_ms_sum: float = 0.0
    histogram: tuple[int, ...] = field(default=(0,) * N_BUCKETS)

    ZERO: ClassVar[TrafficCounts]

    def __post_init__(self) -> None:
        if len(self.histogram) != N_BUCKETS:
            raise ValueError(
                f"TrafficCounts.histogram needs {N_BUCKETS} buckets, got {len(self.histogram)}"
            )

    def __add__(self, other: TrafficCounts) -> TrafficCounts:
        if not isinstance(other, TrafficCounts):
            return NotImplemented
        return TrafficCounts(
            self.requests + other.requests,
            self.success + other.success,
            self.client_errors + other.client_errors,
            self.server_errors + other.server_errors,
            self.denied + other.denied,
            self.logins + other.logins,
            self.login_failures + other.login_failures,
            self.duration_ms_sum + other.duration_ms_sum,
            tuple(a + b for a, b in zip(self.histogram, other.histogram, strict=True)),
        )

    @staticmethod
    def total(counts: Iterable[TrafficCounts]) -> TrafficCounts:
        """The sum of ``counts`` (zeros for none)."""
        out = TrafficCounts.ZERO
        for c in counts:
            out = out + c
        return out

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile of the durations, in ms; None when there are no requests.

        ``q`` is a fraction: 0.5 for the median, 0.95 for p95, 0.99 for p99.
        Read from the histogram: the bucket holding the ``q * requests``-th
        duration, interpolated linearly inside it (the first bucket starts at
        0). The result is in the same bucket as the true value. Durations over
        the last finite bound (60 s) read as 60000.0: "at least a minute".
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"percentile q must be a fraction between 0 and 1, got {q!r}")
        total = sum(self.histogram)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.histogram):
            if n == 0 or seen + n < rank:
                seen += n
                continue
            lower = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            upper = LATENCY_BOUNDS_MS[i]
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * max(0.0, rank - seen) / n
        return LATENCY_BOUNDS_MS[-2]  # pragma: no cover - rank <= total always stops above

    @property
    def mean_ms(self) -> float | None:
        """The mean duration in ms (exact: from the sum); None without requests."""
        return self.duration_ms_sum / self.requests if self.requests else None

    @property
    def server_error_rate(self) -> float | None:
        """``server_errors / requests`` (0 to 1); None without requests."""
        return self.server_errors / self.requests if self.requests else None

    def latency_ms(self) -> dict[str, float | None]:
        """``{"p50": …, "p95": …, "p99": …}`` in ms (None without requests)."""
        return {"p50": self.percentile(0.5), "p95": self.percentile(0.95),
                "p99": self.percentile(0.99)}  # fmt: skip


TrafficCounts.ZERO = TrafficCounts()


@dataclass(frozen=True, slots=True)
class EndpointTraffic:
    """One endpoint's traffic in the window.

    ``method`` is the request method, or ``"OTHER"`` for methods outside
    :data:`~leza_middleware.state.labels.METHODS`; ``route`` the route
    template, or ``"(unmatched)"`` for requests no route matched (404 scans).
    ``f"{method} {route}"`` is the value of the ACCESS ``endpoint`` filter
    that lists these requests. ``last_seen_us``: the start time (µs) of the
    newest of them.
    """

    method: str
    route: str
    counts: TrafficCounts
    last_seen_us: int

    @property
    def endpoint(self) -> str:
        """``"GET /items/{item_id}"``: the ``endpoint`` filter value of this row."""
        return f"{self.method} {self.route}"


@dataclass(frozen=True, slots=True)
class Traffic:
    """Traffic of a window, from rollups (see the module documentation).

    ``series``: ``(bucket start µs, counts)`` for every bucket of the window in
    time order, zeros included; ``endpoints``: one per method + route with
    requests in the window, most requests first (then by method and route);
    ``totals``: the whole window (the sum of either).
    """

    since_us: int  # the first minute counted (inclusive)
    until_us: int  # the end of the last minute counted (exclusive)
    bucket_seconds: int
    totals: TrafficCounts
    series: list[tuple[int, TrafficCounts]]
    endpoints: list[EndpointTraffic]


def bucket_seconds_for(since_us: int, until_us: int) -> int:
    """The bucket STATE charts a window with: 60 (minutes) for windows up to 3 hours,
    3600 (hours) up to 4 days, else 86400 (UTC days) — 25 to 240 points, or one
    per day of longer windows."""
    span = until_us - since_us
    if span <= 3 * HOUR:
        return 60
    if span <= 4 * DAY:
        return 3600
    return 86400


def check_window(since_us: int, until_us: int, bucket_seconds: int) -> tuple[int, int, int]:
    """Validate a :meth:`Storage.traffic` request; return the minute-aligned window
    ``[start, end)`` and the bucket length in µs. Raises ValueError naming the problem."""
    for name, value in (("since_us", since_us), ("until_us", until_us),
                        ("bucket_seconds", bucket_seconds)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"traffic(): {name} must be an int, got {value!r}")
    if until_us < since_us:
        raise ValueError(f"traffic(): until_us ({until_us}) is before since_us ({since_us})")
    if bucket_seconds <= 0 or bucket_seconds % 60:
        raise ValueError(
            f"traffic(): bucket_seconds must be a positive multiple of 60, got {bucket_seconds}"
        )
    start = since_us - since_us % MINUTE
    end = until_us - until_us % MINUTE + MINUTE
    step = bucket_seconds * 1_000_000
    buckets = (end - 1) // step - start // step + 1
    if buckets > MAX_BUCKETS:
        raise ValueError(
            f"traffic(): {buckets} buckets of {bucket_seconds} s in this window, more than "
            f"{MAX_BUCKETS}; use a longer bucket (bucket_seconds_for() picks one)"
        )
    return start, end, step


# --------------------------------------------------------------------------- building

#: The rollup vector of one (bucket, method, route): counts in this order, then
#: ``last_seen``, then the histogram. The rollup tables' columns (after ``ts``,
#: ``method``, ``route``) and the write path's accumulators use this layout.
COUNT_FIELDS = ("requests", "success", "client_errors", "server_errors", "denied",
                "logins", "login_failures", "duration_us")  # fmt: skip
LAST_SEEN = len(COUNT_FIELDS)  # index of last_seen in a vector
HIST = LAST_SEEN + 1  # index of the first histogram bucket
VECTOR = HIST + N_BUCKETS


def counts_of(vector: Sequence[int]) -> TrafficCounts:
    """:class:`TrafficCounts` of one rollup vector (see :data:`COUNT_FIELDS`)."""
    return TrafficCounts(
        int(vector[0]), int(vector[1]), int(vector[2]), int(vector[3]), int(vector[4]),
        int(vector[5]), int(vector[6]), int(vector[7]) / 1000,
        tuple(int(n) for n in vector[HIST:VECTOR]),
    )  # fmt: skip


def _add(acc: list[int] | None, vector: list[int]) -> list[int]:
    """``acc + vector`` (sums; the newest ``last_seen``), C-level list operations."""
    if acc is None:
        return vector
    out = list(map(add, acc, vector))
    out[LAST_SEEN] = max(acc[LAST_SEEN], vector[LAST_SEEN])
    return out


def build_traffic(
    rows: Iterable[tuple[int, str, str, list[int]]], start: int, end: int, step: int
) -> Traffic:
    """A :class:`Traffic` from grouped rollup rows ``(bucket start µs, method, route,
    vector)`` covering ``[start, end)`` (a bucket and endpoint may repeat: they add
    up). The vectors are lists of ints, read and not changed."""
    by_bucket: dict[int, list[int]] = {}
    by_endpoint: dict[tuple[str, str], list[int]] = {}
    for bucket, method, route, vector in rows:
        by_bucket[bucket] = _add(by_bucket.get(bucket), vector)
        key = (method, route)
        by_endpoint[key] = _add(by_endpoint.get(key), vector)
    total: list[int] | None = None
    for vector in by_endpoint.values():
        total = _add(total, vector)
    zero = TrafficCounts.ZERO
    first = start - start % step
    series = []
    for b in range(first, end, step):
        v = by_bucket.get(b)
        series.append((b, zero if v is None else counts_of(v)))
    endpoints = [
        EndpointTraffic(method, route, counts_of(v), v[LAST_SEEN])
        for (method, route), v in by_endpoint.items()
        if v[0] > 0
    ]
    endpoints.sort(key=lambda e: (-e.counts.requests, e.method, e.route))
    totals = zero if total is None else counts_of(total)
    return Traffic(start, end, step // 1_000_000, totals, series, endpoints)
