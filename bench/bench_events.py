"""Event classes, side by side in one run: hand-written vs dataclass vs msgspec.Struct.

Measures, per event, construction, ``to_dict()`` and ``from_dict()`` for the
shapes the recorder builds:

* ``log``: a LOG record (keyword-only constructor, one derived field), the
  commonest event after access;
* ``advisory``: keyword-only with validation (the severity check) and coercions;
* ``access``: one access event: the library's row-tuple class (fields read
  from one tuple that storage writes as the SQL row) vs a 25-field
  dataclass / Struct (which storage would have to turn into a row: timed
  too, as ``row``).

"hand-written" is the pre-#16 class (``__init__``/``__eq__`` written out,
copied here as the reference); "dataclass" is ``@dataclass(slots=True,
kw_only=True)`` with ``__post_init__``; "msgspec" is ``msgspec.Struct``
(kw_only) with ``__post_init__``; ``lib`` is what leza_middleware.events
ships now. The JSON form is the same hand-written dict in every variant.
Best of several repeats, ns of thread CPU time per event.

    python bench/bench_events.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from leza_middleware import events as lib
from leza_middleware.events import iso_from_us, log_action, us_from_iso

try:
    import msgspec
except ImportError:  # pragma: no cover - optional for this bench
    msgspec = None  # type: ignore[assignment]

SEVERITIES = ("info", "low", "medium", "high", "critical")

# -- hand-written (before) -------------------------------------------------------


class HandLog:
    __slots__ = ("action", "app", "exception", "id", "level", "logger", "message",
                 "origin", "performer_id", "request_id", "route", "ts")  # fmt: skip

    def __init__(self, *, id: str, ts: int, level: int, logger: str, message: str,
                 exception: str | None = None, request_id: str | None = None,
                 performer_id: str | None = None, route: str | None = None,
                 origin: str = "", app: str = "app") -> None:  # fmt: skip
        self.id = id
        self.ts = ts
        self.level = level
        self.action = log_action(level)
        self.logger = logger
        self.message = message
        self.exception = exception
        self.request_id = request_id
        self.performer_id = performer_id
        self.route = route
        self.origin = origin
        self.app = app

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)


class HandAdvisory:
    __slots__ = ("action", "app", "details", "evidence", "id", "ip", "message",
                 "performer_id", "request_id", "session_id", "severity", "ts")  # fmt: skip

    def __init__(self, *, id: str, ts: int, rule: str, severity: str, message: str,
                 evidence: Sequence[str] = (), performer_id: str | None = None,
                 ip: str | None = None, details: Mapping[str, Any] | None = None,
                 app: str = "app", request_id: str | None = None,
                 session_id: str | None = None) -> None:  # fmt: skip
        if severity not in SEVERITIES:
            raise ValueError(f"bad severity {severity!r}")
        self.id = id
        self.ts = ts
        self.action = rule
        self.severity = severity
        self.message = message
        self.evidence = tuple(evidence)
        self.performer_id = performer_id
        self.ip = ip
        self.details = {} if details is None else dict(details)
        self.app = app
        self.request_id = request_id
        self.session_id = session_id


# -- dataclass ------------------------------------------------------------------


@dataclass(slots=True, kw_only=True, repr=False)
class DcLog:
    id: str
    ts: int
    level: int
    logger: str
    message: str
    exception: str | None = None
    request_id: str | None = None
    performer_id: str | None = None
    route: str | None = None
    origin: str = ""
    app: str = "app"
    action: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        self.action = log_action(self.level)


@dataclass(slots=True, kw_only=True, repr=False)
class DcAdvisory:
    id: str
    ts: int
    rule: str
    severity: str
    message: str
    evidence: Sequence[str] = ()
    performer_id: str | None = None
    ip: str | None = None
    details: Mapping[str, Any] | None = None
    app: str = "app"
    request_id: str | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"bad severity {self.severity!r}")
        self.evidence = tuple(self.evidence)
        self.details = {} if self.details is None else dict(self.details)


@dataclass(slots=True, kw_only=True, repr=False)
class DcAccess:
    id: str
    ts: int
    action: str
    method: str
    endpoint: str
    route: str | None
    status: int
    duration_us: int
    outcome: str
    reason: str
    request_id: str
    client_ip: str
    ip_valid: bool
    peer_ip: str
    proxy_chain: str = ""
    scheme: str = "http"
    host: str = ""
    app: str = "app"
    device_key: str | None = None
    geo_key: str | None = None
    performer_id: str | None = None
    performer_key: str | None = None
    machine_id: str | None = None
    session_hash: str | None = None
    headers: str | None = None


# -- msgspec.Struct -------------------------------------------------------------

if msgspec is not None:

    class MsLog(msgspec.Struct, kw_only=True):
        id: str
        ts: int
        level: int
        logger: str
        message: str
        exception: str | None = None
        request_id: str | None = None
        performer_id: str | None = None
        route: str | None = None
        origin: str = ""
        app: str = "app"
        action: str = ""

        def __post_init__(self) -> None:
            self.action = log_action(self.level)

    class MsAdvisory(msgspec.Struct, kw_only=True):
        id: str
        ts: int
        rule: str
        severity: str
        message: str
        evidence: Sequence[str] = ()
        performer_id: str | None = None
        ip: str | None = None
        details: Mapping[str, Any] | None = None
        app: str = "app"
        request_id: str | None = None
        session_id: str | None = None

        def __post_init__(self) -> None:
            if self.severity not in SEVERITIES:
                raise ValueError(f"bad severity {self.severity!r}")
            self.evidence = tuple(self.evidence)
            self.details = {} if self.details is None else dict(self.details)

    class MsAccess(msgspec.Struct, kw_only=True):
        id: str
        ts: int
        action: str
        method: str
        endpoint: str
        route: str | None
        status: int
        duration_us: int
        outcome: str
        reason: str
        request_id: str
        client_ip: str
        ip_valid: bool
        peer_ip: str
        proxy_chain: str = ""
        scheme: str = "http"
        host: str = ""
        app: str = "app"
        device_key: str | None = None
        geo_key: str | None = None
        performer_id: str | None = None
        performer_key: str | None = None
        machine_id: str | None = None
        session_hash: str | None = None
        headers: str | None = None


# -- the JSON form (identical for every variant) ---------------------------------


def log_to_dict(e: Any) -> dict[str, Any]:
    return {"_id": e.id, "kind": "log", "timestamp": iso_from_us(e.ts), "action": e.action,
            "level": e.level, "logger": e.logger, "message": e.message, "exception": e.exception,
            "request_id": e.request_id, "performer_id": e.performer_id, "route": e.route,
            "origin": e.origin, "app": e.app}  # fmt: skip


def log_from_dict(cls: Any, d: Mapping[str, Any]) -> Any:
    return cls(id=d["_id"], ts=us_from_iso(d["timestamp"]), level=int(d["level"]),
               logger=d.get("logger", ""), message=d.get("message", ""),
               exception=d.get("exception"), request_id=d.get("request_id"),
               performer_id=d.get("performer_id"), route=d.get("route"),
               origin=d.get("origin", ""), app=d.get("app", "app"))  # fmt: skip


def adv_to_dict(e: Any) -> dict[str, Any]:
    action = e.action if hasattr(e, "action") else e.rule
    return {"_id": e.id, "kind": "advisory", "timestamp": iso_from_us(e.ts), "action": action,
            "rule": action, "severity": e.severity, "message": e.message,
            "evidence": list(e.evidence), "performer_id": e.performer_id, "ip": e.ip,
            "details": e.details, "request_id": e.request_id, "session_id": e.session_id,
            "app": e.app}  # fmt: skip


def adv_from_dict(cls: Any, d: Mapping[str, Any]) -> Any:
    return cls(id=d["_id"], ts=us_from_iso(d["timestamp"]), rule=d.get("rule") or d["action"],
               severity=d.get("severity", "info"), message=d.get("message", ""),
               evidence=d.get("evidence") or (), performer_id=d.get("performer_id"),
               ip=d.get("ip"), details=d.get("details"), app=d.get("app", "app"),
               request_id=d.get("request_id"), session_id=d.get("session_id"))  # fmt: skip


def access_row(e: Any) -> tuple[Any, ...]:
    """What storage writes: the library's class has it; the others build it."""
    return (e.id, e.ts, e.action, e.method, e.endpoint, e.route, e.status, e.duration_us,
            e.outcome, e.reason, e.request_id, e.client_ip, e.ip_valid, e.peer_ip, e.proxy_chain,
            e.scheme, e.host, e.app, e.device_key, e.geo_key, e.performer_id, e.performer_key,
            e.machine_id, e.session_hash, e.headers)  # fmt: skip


# -- timing ---------------------------------------------------------------------

N = 20_000
REPEATS = 7


def per_event_ns(fn: Callable[[], object], n: int = N) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        # CPU time of this thread: a busy shared machine inflates wall time.
        t0 = time.thread_time_ns()
        fn()
        best = min(best, (time.thread_time_ns() - t0) / n)
    return best


def log_kwargs(i: int) -> dict[str, Any]:
    return {"id": f"{i:032x}", "ts": 1_767_000_000_000_000 + i, "level": 20 + i % 3 * 10,
            "logger": "app.orders", "message": f"order {i} shipped", "request_id": f"r{i}",
            "performer_id": "u1", "route": "/orders/{id}",
            "origin": "orders.py:42 in ship"}  # fmt: skip


def adv_kwargs(i: int) -> dict[str, Any]:
    return {"id": f"{i:032x}", "ts": 1_767_000_000_000_000 + i, "rule": "new_machine",
            "severity": "medium", "message": "signed in from a new machine",
            "evidence": [f"e{i}"], "performer_id": "u1", "ip": "81.2.69.142",
            "details": {"machine": "m1"}, "request_id": f"r{i}"}  # fmt: skip


def access_kwargs(i: int) -> dict[str, Any]:
    return {"id": f"{i:032x}", "ts": 1_767_000_000_000_000 + i, "action": "access",
            "method": "GET", "endpoint": "/", "route": "/", "status": 200, "duration_us": 100,
            "outcome": "success", "reason": "", "request_id": f"r{i}", "client_ip": "81.2.69.142",
            "ip_valid": True, "peer_ip": "127.0.0.1", "proxy_chain": "", "scheme": "http",
            "host": "127.0.0.1:8000", "app": "app", "device_key": "d1", "geo_key": "g1",
            "performer_id": None, "performer_key": None, "machine_id": "m1",
            "session_hash": None, "headers": None}  # fmt: skip


def bench_kind(
    variants: dict[str, Any],
    make_kwargs: Callable[[int], dict[str, Any]],
    to_dict: Callable[[Any], dict[str, Any]],
    from_dict: Callable[[Any, Mapping[str, Any]], Any],
) -> dict[str, tuple[float, float, float]]:
    kws = [make_kwargs(i) for i in range(N)]
    out: dict[str, tuple[float, float, float]] = {}
    for name, cls in variants.items():
        evs = [cls(**k) for k in kws]
        dicts = [to_dict(e) for e in evs]
        build = per_event_ns(lambda cls=cls: [cls(**k) for k in kws])
        dump = per_event_ns(lambda evs=evs: [to_dict(e) for e in evs])
        load = per_event_ns(lambda cls=cls, dicts=dicts: [from_dict(cls, d) for d in dicts])
        out[name] = (build, dump, load)
    return out


def bench_access() -> dict[str, tuple[float, float, float]]:
    """Construction from positional-free keywords, and the row storage writes."""
    kws = [access_kwargs(i) for i in range(N)]
    rows = [tuple(k.values()) for k in kws]
    out: dict[str, tuple[float, float, float]] = {}
    lib_cls = lib.AccessEvent
    # The recorder builds the library's event from one ready tuple (enrich/access.py).
    build = per_event_ns(lambda: [lib_cls(r) for r in rows])
    evs = [lib_cls(r) for r in rows]
    row = per_event_ns(lambda: [e.row for e in evs])
    read = per_event_ns(lambda: [(e.status, e.route, e.client_ip) for e in evs])
    out["lib (row tuple)"] = (build, row, read)
    variants: dict[str, Any] = {"dataclass": DcAccess}
    if msgspec is not None:
        variants["msgspec"] = MsAccess
    for name, cls in variants.items():
        build = per_event_ns(lambda cls=cls: [cls(**k) for k in kws])
        evs2 = [cls(**k) for k in kws]
        row = per_event_ns(lambda evs2=evs2: [access_row(e) for e in evs2])
        read = per_event_ns(lambda evs2=evs2: [(e.status, e.route, e.client_ip) for e in evs2])
        out[name] = (build, row, read)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, msgspec {getattr(msgspec, '__version__', 'absent')}")
    print(f"ns of CPU per event, best of {REPEATS} x {N:,}; {args.rounds} rounds")
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for _ in range(args.rounds):
        log_variants: dict[str, Any] = {"hand-written": HandLog, "dataclass": DcLog,
                                        "lib": lib.LogEvent}  # fmt: skip
        adv_variants: dict[str, Any] = {"hand-written": HandAdvisory, "dataclass": DcAdvisory,
                                        "lib": lib.AdvisoryEvent}  # fmt: skip
        if msgspec is not None:
            log_variants["msgspec"] = MsLog
            adv_variants["msgspec"] = MsAdvisory
        kinds = {
            "log": bench_kind(log_variants, log_kwargs, log_to_dict, log_from_dict),
            "advisory": bench_kind(adv_variants, adv_kwargs, adv_to_dict, adv_from_dict),
            "access": bench_access(),
        }
        for kind, res in kinds.items():
            for variant, figures in res.items():
                results.setdefault((kind, variant), []).append(figures)
    print(f"{'kind':9} {'variant':16} {'build':>22} {'to_dict|row':>22} {'from_dict|read':>22}")
    for (kind, variant), runs in results.items():
        cols = []
        for j in range(3):
            vals = [r[j] for r in runs]
            cols.append(f"{statistics.median(vals):6.0f} ({min(vals):.0f}-{max(vals):.0f})")
        print(f"{kind:9} {variant:16} " + " ".join(f"{c:>22}" for c in cols))
    print("median (min-max) over rounds; access: build / row for storage / read 3 fields")


if __name__ == "__main__":
    main()
