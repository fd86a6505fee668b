"""How an access event is labelled in rollups, and the ACCESS ``endpoint`` filter.

Rollups are kept per method + route template, so their row count must not
depend on what clients send (think of a scanner requesting 100,000 random
paths with made-up methods):

* a request no route matched (``route`` is None: a 404 of every framework's
  router) is labelled :data:`UNMATCHED_ROUTE`, whatever its path;
* a method outside :data:`METHODS` is labelled :data:`OTHER_METHOD`;
* a route template longer than :data:`ROUTE_LABEL_MAX` characters is cut to
  that length, ending with ``…`` (templates come from the app's code, not
  from clients; this only keeps index entries small).

The ``endpoint`` filter (``leza.query.access(endpoint=…)``) takes the same
labels: ``"GET /items/{item_id}"`` (that method and route), ``"/items/{item_id}"``
(any method), ``"(unmatched)"``, ``"OTHER /x"`` (methods outside the set).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = [
    "CLIENT_ERROR",
    "DENIED",
    "METHODS",
    "OTHER_METHOD",
    "ROUTE_LABEL_MAX",
    "SERVER_ERROR",
    "SUCCESS",
    "UNMATCHED_ROUTE",
    "EndpointFilter",
    "method_label",
    "outcome_index",
    "parse_endpoint",
    "route_label",
]

#: Methods kept by name in rollups ("WS": a websocket connection).
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "WS"}
)
#: The label of every other method.
OTHER_METHOD = "OTHER"
#: The label of requests no route matched.
UNMATCHED_ROUTE = "(unmatched)"
#: Longest route label; longer templates are cut to this many characters, the
#: last being ``…`` (PostgreSQL index entries stay far below their 2.7 KB limit).
ROUTE_LABEL_MAX = 256
_CUT = "…"
#: Longest ``endpoint`` filter value accepted.
ENDPOINT_MAX = 4096

# Indexes into a rollup vector (state.traffic.COUNT_FIELDS) of the four outcomes.
SUCCESS, CLIENT_ERROR, SERVER_ERROR, DENIED = 1, 2, 3, 4


def method_label(method: str) -> str:
    """The method as rollups keep it: itself when in :data:`METHODS`, else ``"OTHER"``."""
    return method if method in METHODS else OTHER_METHOD


def route_label(route: str | None) -> str:
    """The route as rollups keep it (see the module documentation)."""
    if route is None:
        return UNMATCHED_ROUTE
    if len(route) > ROUTE_LABEL_MAX:
        return route[: ROUTE_LABEL_MAX - 1] + _CUT
    return route


def outcome_index(outcome: str, status: int | None) -> int:
    """Which outcome count a request adds to (:data:`SUCCESS` … :data:`DENIED`).

    From the stored access ``outcome`` first (``enrich/access.py`` sets it:
    ``denied`` for permission denials, refused sessions and 401/403;
    ``error`` for 5xx and responses the app broke off; ``failure`` for other
    4xx and failed logins), then from the status for events built elsewhere:
    no status, below 100 or >= 500 is a server error, 4xx a client error.
    """
    if outcome == "denied":
        return DENIED
    if outcome == "error" or status is None or status < 100 or status >= 500:
        return SERVER_ERROR
    if outcome == "failure" or status >= 400:
        return CLIENT_ERROR
    return SUCCESS


_METHOD_TOKEN = re.compile(r"[A-Z]+")


@dataclass(frozen=True, slots=True)
class EndpointFilter:
    """A parsed ``endpoint`` filter (:func:`parse_endpoint`).

    ``method``: None for any method; ``"OTHER"`` for any method outside
    :data:`METHODS`; else that exact method. ``route``: a route template, or
    :data:`UNMATCHED_ROUTE` (requests no route matched). A route label cut by
    :func:`route_label` (``ROUTE_LABEL_MAX`` characters ending with ``…``)
    also matches the longer templates it stands for (:attr:`prefix`).
    """

    method: str | None
    route: str

    @property
    def unmatched(self) -> bool:
        return self.route == UNMATCHED_ROUTE

    @property
    def prefix(self) -> str | None:
        """For a cut route label: the start every template it stands for has."""
        r = self.route
        if len(r) == ROUTE_LABEL_MAX and r.endswith(_CUT):
            return r[:-1]
        return None

    def matches_method(self, method: str) -> bool:
        m = self.method
        if m is None:
            return True
        if m == OTHER_METHOD:
            return method not in METHODS
        return method == m

    def matches_route(self, route: str | None) -> bool:
        if self.unmatched:
            return route is None
        if route is None:
            return False
        if route == self.route:
            return True
        prefix = self.prefix
        return prefix is not None and len(route) > ROUTE_LABEL_MAX and route.startswith(prefix)

    def matches(self, method: str, route: str | None) -> bool:
        """Whether an access event with this method and route is selected."""
        return self.matches_method(method) and self.matches_route(route)


@functools.lru_cache(maxsize=256)
def parse_endpoint(value: str) -> EndpointFilter:
    """``"GET /items/{item_id}"``, ``"/items/{item_id}"``, ``"(unmatched)"``, …

    A first word of capital letters followed by a space is the method; the
    rest (or the whole value) is the route. Raises ValueError for an empty
    value, one longer than 4,096 characters, or a method without a route.
    """
    if not isinstance(value, str):
        raise ValueError(f"endpoint must be a string such as 'GET /items/{{id}}', got {value!r}")
    text = value.strip()
    if not text:
        raise ValueError("endpoint is empty; expected e.g. 'GET /items/{id}' or '/items/{id}'")
    if len(text) > ENDPOINT_MAX:
        raise ValueError(f"endpoint is longer than {ENDPOINT_MAX} characters")
    head, _, rest = text.partition(" ")
    if _METHOD_TOKEN.fullmatch(head):
        route = rest.strip()
        if not route:
            raise ValueError(
                f"endpoint {text!r} names a method but no route; expected e.g. 'GET /items/{{id}}'"
            )
        return EndpointFilter(head, route)
    return EndpointFilter(None, text)
