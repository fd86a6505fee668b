"""The state of the app at a glance: traffic read from rollups (``storage.traffic()``).

Types and helpers the STATE views are built from; see :mod:`.traffic` for the
window and bucket rules and :mod:`.labels` for how requests are labelled
(method, route, outcome) and the ACCESS ``endpoint`` filter.
"""

from __future__ import annotations

from .labels import (
    METHODS,
    OTHER_METHOD,
    UNMATCHED_ROUTE,
    EndpointFilter,
    parse_endpoint,
)
from .traffic import (
    LATENCY_BOUNDS_MS,
    MAX_BUCKETS,
    EndpointTraffic,
    Traffic,
    TrafficCounts,
    TrafficUnsupported,
    bucket_seconds_for,
)

__all__ = [
    "LATENCY_BOUNDS_MS",
    "MAX_BUCKETS",
    "METHODS",
    "OTHER_METHOD",
    "UNMATCHED_ROUTE",
    "EndpointFilter",
    "EndpointTraffic",
    "Traffic",
    "TrafficCounts",
    "TrafficUnsupported",
    "bucket_seconds_for",
    "parse_endpoint",
]
