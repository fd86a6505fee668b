"""Advisory rules: the base class users subclass, and the built-in rules.

A rule looks at one event at a time (:meth:`Rule.observe`) and yields
:class:`Finding` objects; the engine turns each finding into an
:class:`~leza_middleware.events.AdvisoryEvent`. The engine calls a rule only
for events of its ``kinds`` whose ``action`` is in its ``actions`` (``None``:
every action), so an ordinary access event costs a rule nothing.
"""

from __future__ import annotations

import abc
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..enrich.cache import bounded_put
from ..errors import LezaConfigError
from ..events import SEVERITIES, AccessEvent, CheckEvent, Device, Event, SessionEvent, iso_from_us
from ..performer import Performer
from ..sessions.registry import REVOKED_REASON
from .history import History, Location, PerformerState, location_of, place_label

__all__ = [
    "ALARM_RULES",
    "BotOnLogin",
    "Burst",
    "Finding",
    "ImpossibleTravel",
    "NewCountry",
    "NewMachine",
    "RevokedSessionReuse",
    "Rule",
    "RuleContext",
    "ServiceState",
    "default_rules",
    "haversine_km",
]

_US = 1_000_000
#: The advisories that restate an availability alarm (``ServiceState``'s): the
#: monitor already sends the check's own ``down`` / ``recovered`` notification for
#: the same transition (and keeps quiet in a maintenance window), so these are
#: stored and shown but never sent to the notifiers a second time.
ALARM_RULES = frozenset({"service_down", "service_recovered"})
_DAY_US = 86_400 * _US
#: Cap of the per-key memory of the rules that keep some (burst windows, cooldowns).
DEFAULT_MAX_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class Finding:
    """What a rule found: a human sentence and the ids of the events it rests on.

    ``severity`` and ``rule`` override the rule's own (one rule may report
    several kinds of advisory, e.g. ``service_down`` and ``service_recovered``).
    An empty ``evidence`` becomes the id of the event being observed.
    ``details`` must be JSON-able (it is stored with the advisory).
    """

    message: str
    evidence: tuple[str, ...] = ()
    performer_id: str | None = None
    ip: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    severity: str | None = None
    rule: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.evidence, tuple):
            object.__setattr__(self, "evidence", tuple(self.evidence))
        if self.severity is not None and self.severity not in SEVERITIES:
            raise ValueError(
                f"Finding.severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}"
            )


class RuleContext:
    """What a rule may consult besides the event: the history and the clock.

    One context serves one :meth:`AdvisoryEngine.process` call (one batch).
    """

    __slots__ = ("_batch", "_login_ids", "app_name", "clock", "history")

    def __init__(
        self,
        history: History,
        batch: Sequence[Event] = (),
        *,
        clock: Callable[[], float] | None = None,
        app_name: str = "app",
    ) -> None:
        self.history = history
        self.app_name = app_name
        self.clock = clock if clock is not None else history.clock
        self._batch = batch
        self._login_ids: frozenset[str] | None = None

    def now(self) -> float:
        """The engine clock, seconds since the epoch."""
        return float(self.clock())

    def batch_login_ids(self) -> frozenset[str]:
        """Ids of the login events of the current batch (kept out of hydration)."""
        ids = self._login_ids
        if ids is None:
            ids = self._login_ids = frozenset(
                e.id for e in self._batch if e.kind == "access" and e.action == "login"
            )
        return ids

    def performer(self, performer_id: str, ts_us: int) -> PerformerState:
        """The history of one performer before the events of this batch still to come.

        Hydrated from storage when due (never raises: on a storage failure it
        is what this process saw). Events are folded in by the engine after
        every rule observed them, so during :meth:`Rule.observe` the state
        does not include the observed event yet.
        """
        return self.history.state(performer_id, ts_us, self.batch_login_ids())


class Rule(abc.ABC):
    """Base class of advisory rules. Subclass it and give it to the engine.

    Class attributes (an instance may override them):

    * ``name`` — the rule's name, stored as the advisory's ``rule``/``action``;
    * ``severity`` — one of ``info``, ``low``, ``medium``, ``high``, ``critical``;
    * ``kinds`` — the event kinds it wants (``"access"``, ``"session"``, ``"check"``, …);
    * ``actions`` — the actions it wants, or ``None`` for every action (the
      engine filters before calling :meth:`observe`, keep it narrow);
    * ``bots_only`` — call it only for events whose ``device`` is a bot (the
      engine checks that with one attribute read, before any call);
    * ``uses_history`` / ``history_days`` — whether it reads
      :meth:`RuleContext.performer` and how many days of logins it needs.

    :meth:`observe` is called on the recorder thread, one event at a time in
    order; it may keep state on ``self`` (bound it) and must be quick.
    """

    name: str = ""
    severity: str = "medium"
    kinds: frozenset[str] = frozenset({"access"})
    actions: frozenset[str] | None = None
    bots_only: bool = False
    uses_history: bool = False
    history_days: float = 0.0

    def __init__(self, *, name: str | None = None, severity: str | None = None) -> None:
        if name is not None:
            if not isinstance(name, str) or not name.strip():
                raise LezaConfigError(f"{type(self).__name__}(name=...) must be a non-empty string")
            self.name = name
        if severity is not None:
            _check_severity(type(self).__name__, "severity", severity)
            self.severity = severity

    @abc.abstractmethod
    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        """Findings about ``event`` (usually none: return ``()``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, severity={self.severity!r})"


# --------------------------------------------------------------------------- helpers


def _check_severity(owner: str, param: str, value: Any) -> None:
    if value not in SEVERITIES:
        raise LezaConfigError(
            f"{owner}({param}=...) must be one of {', '.join(SEVERITIES)}, got {value!r}"
        )


def _number(
    owner: str,
    param: str,
    value: Any,
    *,
    minimum: float = 0.0,
    exclusive: bool = False,
    integer: bool = False,
) -> float:
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if (
        isinstance(value, bool)
        or not ok
        or not math.isfinite(value)
        or (value <= minimum if exclusive else value < minimum)
    ):
        bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
        raise LezaConfigError(f"{owner}({param}=...) must be {kind} {bound}, got {value!r}")
    return float(value)


def _strings(owner: str, param: str, value: Any, example: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise LezaConfigError(
            f"{owner}({param}=...) must be a sequence of strings such as {example}, got {value!r}"
        )
    items = tuple(value)
    if not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise LezaConfigError(
            f"{owner}({param}=...) must hold at least one non-empty string, got {value!r}"
        )
    return items


def performer_label(performer: Performer | None, performer_id: str | None = None) -> str:
    """How a sentence names a performer: name, else email, else id."""
    if performer is not None:
        return performer.name or performer.email or performer.id
    return performer_id or "an unknown user"


def _device_label(device: Device | None) -> str:
    if device is None:
        return ""
    if device.browser_name and device.os_name:
        return f"{device.browser_name} on {device.os_name}"
    return device.browser_name or device.os_name or device.device_type


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"5 h"``, ``"3 days"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _touch(cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


# BotOnLogin's memo of paths matched: entries, and the longest path kept.
_ROUTE_MEMO = 4096
_MAX_MEMO_PATH = 256


def _path_segments(path: str | None) -> tuple[str, ...]:
    if not path:
        return ()
    path = path.split("?", 1)[0].split("#", 1)[0].lower()
    return tuple(s for s in path.split("/") if s)


def _contains_run(segments: tuple[str, ...], run: tuple[str, ...]) -> bool:
    n = len(run)
    return any(segments[i : i + n] == run for i in range(len(segments) - n + 1))


class _Cooldown:
    """Remembers, per key, when a rule last fired (bounded, least recently used out)."""

    __slots__ = ("_fired", "limit", "period_us")

    def __init__(self, period_s: float, limit: int) -> None:
        self.period_us = int(period_s * _US)
        self.limit = limit
        self._fired: OrderedDict[Any, int] = OrderedDict()

    def ready(self, key: Any, ts: int) -> bool:
        last = self._fired.get(key)
        return last is None or self.period_us <= 0 or abs(ts - last) >= self.period_us

    def fire(self, key: Any, ts: int) -> None:
        _touch(self._fired, key, ts, self.limit)

    def __len__(self) -> int:
        return len(self._fired)


# --------------------------------------------------------------------------- history rules


class NewMachine(Rule):
    """A performer logs in from a machine id none of their earlier logins had.

    Quiet for a performer's first known login (or when none of their earlier
    logins carried a machine id) and for a login without a machine id.
    """

    name = "new_machine"
    severity = "medium"
    kinds = frozenset({"access"})
    actions = frozenset({"login"})
    uses_history = True

    def __init__(self, *, name: str | None = None, severity: str | None = None) -> None:
        super().__init__(name=name, severity=severity)

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if not isinstance(event, AccessEvent):
            return ()
        performer_id, machine = event.performer_id, event.machine_id
        if not performer_id or not machine:
            return ()
        st = ctx.performer(performer_id, event.ts)
        if st.seen(event.id) or not st.machines or machine in st.machines:
            return ()
        parts = [p for p in (_device_label(event.device), place_label(event.geo)) if p]
        where = f" ({', '.join(parts)})" if parts else ""
        who = performer_label(event.performer, performer_id)
        geo = event.geo
        return (
            Finding(
                message=f"{who} logged in from a new machine{where}",
                evidence=(event.id,),
                performer_id=performer_id,
                ip=event.client_ip or None,
                details={
                    "machine_id": machine,
                    "known_machines": len(st.machines),
                    "browser": event.device.browser_name if event.device else "",
                    "os": event.device.os_name if event.device else "",
                    "country_code": geo.country_code if geo else "",
                    "city": geo.city if geo else "",
                },
            ),
        )


class NewCountry(Rule):
    """A performer logs in from a country none of their logins of the last ``days`` had.

    Quiet when the login's country is unknown, and when the performer has no
    login with a known country in those days (nothing to compare with).
    """

    name = "new_country"
    severity = "medium"
    kinds = frozenset({"access"})
    actions = frozenset({"login"})
    uses_history = True

    def __init__(
        self, days: float = 90, *, name: str | None = None, severity: str | None = None
    ) -> None:
        super().__init__(name=name, severity=severity)
        self.days = _number("NewCountry", "days", days, exclusive=True)
        self.history_days = self.days

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if not isinstance(event, AccessEvent):
            return ()
        performer_id, geo = event.performer_id, event.geo
        if not performer_id or geo is None or not geo.country_code:
            return ()
        st = ctx.performer(performer_id, event.ts)
        if st.seen(event.id):
            return ()
        recent = st.countries_since(event.ts - int(self.days * _DAY_US))
        code = geo.country_code
        if not recent or code in recent:
            return ()
        who = performer_label(event.performer, performer_id)
        country = f"{geo.country_name} ({code})" if geo.country_name else code
        city = f", {geo.city}" if geo.city else ""
        days = f"{self.days:g}"
        last_seen = st.countries.get(code)
        return (
            Finding(
                message=(
                    f"{who} logged in from {country}{city}, a country not seen for them "
                    f"in the last {days} days (recent: {', '.join(sorted(recent))})"
                ),
                evidence=(event.id,),
                performer_id=performer_id,
                ip=event.client_ip or None,
                details={
                    "country_code": code,
                    "country_name": geo.country_name,
                    "city": geo.city,
                    "recent_countries": sorted(recent),
                    "days": self.days,
                    "last_seen": None if last_seen is None else iso_from_us(last_seen),
                },
            ),
        )


class ImpossibleTravel(Rule):
    """Two logins or session starts of one performer too far apart for the time between.

    Fires when the great-circle distance over the time gap exceeds
    ``max_kmh``; pairs closer than ``min_km`` are ignored (GeoIP places an
    IP only roughly). Both events need coordinates. Compared with the
    performer's latest known location.
    """

    name = "impossible_travel"
    severity = "high"
    kinds = frozenset({"access", "session"})
    actions = frozenset({"login", "session_start"})
    uses_history = True

    def __init__(
        self,
        max_kmh: float = 900,
        min_km: float = 100,
        *,
        name: str | None = None,
        severity: str | None = None,
    ) -> None:
        super().__init__(name=name, severity=severity)
        self.max_kmh = _number("ImpossibleTravel", "max_kmh", max_kmh, exclusive=True)
        self.min_km = _number("ImpossibleTravel", "min_km", min_km)

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if isinstance(event, AccessEvent):
            performer, performer_id, ip = event.performer, event.performer_id, event.client_ip
        elif isinstance(event, SessionEvent):
            performer, ip = event.performer, event.ip
            performer_id = None if performer is None else performer.id
        else:
            return ()
        if not performer_id:
            return ()
        here = location_of(event)
        if here is None:
            return ()
        st = ctx.performer(performer_id, event.ts)
        before = st.last_location
        if before is None or st.seen(event.id) or before.event_id == event.id:
            return ()
        km = haversine_km(before.latitude, before.longitude, here.latitude, here.longitude)
        if km < self.min_km:
            return ()
        seconds = abs(here.ts - before.ts) / _US
        kmh = math.inf if seconds < 1 else km / (seconds / 3600)
        if kmh <= self.max_kmh:
            return ()
        first, second = (before, here) if before.ts <= here.ts else (here, before)
        who = performer_label(performer, performer_id)
        if seconds < 1:
            pace = f"{km:,.0f} km apart within 1 s"
        else:
            pace = f"{km:,.0f} km in {format_duration(seconds)} ({kmh:,.0f} km/h)"
        return (
            Finding(
                message=(
                    f"Impossible travel for {who}: {first.label or 'somewhere'} → "
                    f"{second.label or 'somewhere'}, {pace}"
                ),
                evidence=(first.event_id, second.event_id),
                performer_id=performer_id,
                ip=ip or None,
                details={
                    "from": _location_details(first),
                    "to": _location_details(second),
                    "km": round(km, 1),
                    "seconds": round(seconds, 3),
                    "kmh": None if math.isinf(kmh) else round(kmh, 1),
                    "max_kmh": self.max_kmh,
                },
            ),
        )


def _location_details(loc: Location) -> dict[str, Any]:
    return {
        "event_id": loc.event_id,
        "timestamp": iso_from_us(loc.ts),
        "place": loc.label,
        "latitude": loc.latitude,
        "longitude": loc.longitude,
    }


# --------------------------------------------------------------------------- stream rules


_ACTION_WORDS = {
    "login_failed": ("failed login", "failed logins"),
    "denied": ("denied request", "denied requests"),
}


def _count_phrase(counts: Mapping[str, int]) -> str:
    parts = []
    for action, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        one, many = _ACTION_WORDS.get(action, (f"{action} event", f"{action} events"))
        parts.append(f"{n} {one if n == 1 else many}")
    if len(parts) > 1:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return parts[0]


class _Window:
    __slots__ = ("events",)

    def __init__(self, size: int) -> None:
        self.events: deque[tuple[int, str, str]] = deque(maxlen=size)  # (ts, id, action)


class Burst(Rule):
    """At least ``threshold`` events of ``actions`` for one performer or one client IP
    within ``window`` seconds.

    Fires once per key (performer or IP) per ``cooldown`` seconds (default:
    ``window``), not once per event over the threshold. The evidence is the
    ids of the events in the window (the newest ``max_evidence``). When the
    performer and the IP of one event fire on the very same evidence, one
    advisory (the performer's) is stored.
    """

    name = "burst"
    severity = "high"
    kinds = frozenset({"access"})
    actions: frozenset[str] | None = frozenset({"login_failed", "denied"})

    def __init__(
        self,
        actions: Sequence[str] = ("login_failed", "denied"),
        threshold: int = 10,
        window: float = 60.0,
        by: Sequence[str] = ("performer", "ip"),
        cooldown: float | None = None,
        *,
        max_evidence: int = 50,
        max_keys: int = DEFAULT_MAX_KEYS,
        name: str | None = None,
        severity: str | None = None,
    ) -> None:
        super().__init__(name=name, severity=severity)
        self.actions = frozenset(_strings("Burst", "actions", actions, "('login_failed',)"))
        self.threshold = int(_number("Burst", "threshold", threshold, minimum=1, integer=True))
        self.window = _number("Burst", "window", window, exclusive=True)
        keys = _strings("Burst", "by", by, "('performer', 'ip')")
        unknown = sorted(set(keys) - {"performer", "ip"})
        if unknown:
            raise LezaConfigError(
                f"Burst(by=...) takes 'performer' and/or 'ip', got {', '.join(map(repr, unknown))}"
            )
        self.by = tuple(dict.fromkeys(keys))
        self.cooldown = self.window if cooldown is None else _number("Burst", "cooldown", cooldown)
        self.max_evidence = int(
            _number("Burst", "max_evidence", max_evidence, minimum=1, integer=True)
        )
        self.max_keys = int(_number("Burst", "max_keys", max_keys, minimum=1, integer=True))
        self._window_us = int(self.window * _US)
        self._size = max(self.threshold, self.max_evidence)
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._cooldown = _Cooldown(self.cooldown, self.max_keys)

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if not isinstance(event, AccessEvent):
            return ()
        findings: list[Finding] = []
        fired_evidence: tuple[str, ...] | None = None
        for by in self.by:
            value = event.performer_id if by == "performer" else event.client_ip
            if not value:
                continue
            key = (by, value)
            win = self._windows.get(key)
            if win is None:
                win = _Window(self._size)
            _touch(self._windows, key, win, self.max_keys)
            events = win.events
            ts = event.ts
            events.append((ts, event.id, event.action))
            oldest = ts - self._window_us
            while events and events[0][0] < oldest:
                events.popleft()
            # (events arrive in time order; a late one never counts events after it)
            inside = [e for e in events if oldest <= e[0] <= ts]
            if len(inside) < self.threshold or not self._cooldown.ready(key, ts):
                continue
            self._cooldown.fire(key, ts)
            evidence = tuple(e[1] for e in inside[-self.max_evidence :])
            if evidence == fired_evidence:
                continue  # the performer's advisory already says it
            fired_evidence = evidence
            counts: dict[str, int] = {}
            for e in inside:
                counts[e[2]] = counts.get(e[2], 0) + 1
            span = (inside[-1][0] - inside[0][0]) / _US
            if by == "performer":
                subject = f"for {performer_label(event.performer, value)}"
            else:
                subject = f"from {value}"
            findings.append(
                Finding(
                    message=(
                        f"Burst {subject}: {_count_phrase(counts)} within "
                        f"{format_duration(max(span, 1.0))}"
                    ),
                    evidence=evidence,
                    performer_id=event.performer_id if by == "performer" else None,
                    ip=event.client_ip or None,
                    details={
                        "by": by,
                        "key": value,
                        "count": len(inside),
                        "counts": counts,
                        "threshold": self.threshold,
                        "window": self.window,
                        "first": iso_from_us(inside[0][0]),
                        "last": iso_from_us(inside[-1][0]),
                    },
                )
            )
        return findings


class RevokedSessionReuse(Rule):
    """A request made with a session that was revoked (refused with 401).

    One advisory per session (else performer, else IP) per ``cooldown``
    seconds, so a client polling with a dead cookie does not flood the tab.
    """

    name = "revoked_session_reuse"
    severity = "high"
    kinds = frozenset({"access"})
    actions = frozenset({"denied"})

    def __init__(
        self,
        cooldown: float = 60.0,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        name: str | None = None,
        severity: str | None = None,
    ) -> None:
        super().__init__(name=name, severity=severity)
        self.cooldown = _number("RevokedSessionReuse", "cooldown", cooldown)
        limit = int(_number("RevokedSessionReuse", "max_keys", max_keys, minimum=1, integer=True))
        self._cooldown = _Cooldown(self.cooldown, limit)

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if not isinstance(event, AccessEvent) or event.reason != REVOKED_REASON:
            return ()
        key = event.session_hash or event.performer_id or event.client_ip
        if not self._cooldown.ready(key, event.ts):
            return ()
        self._cooldown.fire(key, event.ts)
        who = performer_label(event.performer, event.performer_id)
        if who == "an unknown user":
            who = "Someone"
        return (
            Finding(
                message=(
                    f"{who} used a revoked session again: {event.method} {event.endpoint} "
                    f"from {event.client_ip or 'an unknown address'}"
                ),
                evidence=(event.id,),
                performer_id=event.performer_id,
                ip=event.client_ip or None,
                details={
                    "method": event.method,
                    "endpoint": event.endpoint,
                    "status": event.status,
                    "session_id_hash": event.session_hash,
                },
            ),
        )


class BotOnLogin(Rule):
    """A bot User-Agent on a login route, or a bot whose request was a login attempt.

    A route matches when the path (route template or endpoint, query
    stripped, case-insensitive) contains one of ``routes`` as whole path
    segments: ``"auth/token"`` matches ``/api/auth/token`` but ``"login"``
    does not match ``/blog/login-tips``. One advisory per bot and IP per
    ``cooldown`` seconds.
    """

    name = "bot_login"
    severity = "medium"
    kinds = frozenset({"access"})
    actions = None  # route-based: any action, but...
    bots_only = True  # ...only bots: the engine skips every other event before calling

    def __init__(
        self,
        routes: Sequence[str] = ("login", "signin", "sign-in", "sign_in", "auth/token", "token"),
        cooldown: float = 600.0,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        name: str | None = None,
        severity: str | None = None,
    ) -> None:
        super().__init__(name=name, severity=severity)
        items = _strings("BotOnLogin", "routes", routes, "('login', 'auth/token')")
        self.routes = items
        self._runs = tuple(r for r in (_path_segments(x) for x in items) if r)
        if len(self._runs) != len(items):
            raise LezaConfigError(
                f"BotOnLogin(routes=...) entries must name path segments, got {routes!r}"
            )
        self.cooldown = _number("BotOnLogin", "cooldown", cooldown)
        limit = int(_number("BotOnLogin", "max_keys", max_keys, minimum=1, integer=True))
        self._cooldown = _Cooldown(self.cooldown, limit)
        # (route, endpoint) -> on a login route: a crawler requests the same few
        # paths again and again, so each is split and matched once.
        self._matched: dict[tuple[str | None, str], bool] = {}

    def _on_login_route(self, event: AccessEvent) -> bool:
        key = (event.route, event.endpoint)
        found = self._matched.get(key)
        if found is None:
            found = self._matches(key)
            if len(key[1]) <= _MAX_MEMO_PATH:  # long, unique paths are matched, not kept
                bounded_put(self._matched, key, found, _ROUTE_MEMO)
        return found

    def _matches(self, paths: tuple[str | None, str]) -> bool:
        for path in paths:
            segments = _path_segments(path)
            if segments and any(_contains_run(segments, run) for run in self._runs):
                return True
        return False

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        device = getattr(event, "device", None)
        if device is None or device.bot_name is None or not isinstance(event, AccessEvent):
            return ()
        attempt = event.action in ("login", "login_failed")
        if not attempt and not self._on_login_route(event):
            return ()
        key = (device.bot_name, event.client_ip)
        if not self._cooldown.ready(key, event.ts):
            return ()
        self._cooldown.fire(key, event.ts)
        bot = device.bot_name or device.browser_name or "unnamed bot"
        what = "attempted a login" if attempt else "requested a login route"
        return (
            Finding(
                message=(
                    f"A bot ({bot}) {what}: {event.method} {event.endpoint} -> {event.status} "
                    f"from {event.client_ip or 'an unknown address'}"
                ),
                evidence=(event.id,),
                performer_id=event.performer_id,
                ip=event.client_ip or None,
                details={
                    "bot": bot,
                    "bot_category": device.bot_category,
                    "user_agent": device.user_agent[:512],
                    "action": event.action,
                    "endpoint": event.endpoint,
                    "route": event.route,
                    "status": event.status,
                },
            ),
        )


class ServiceState(Rule):
    """An availability check turned DOWN (``service_down``) or came back UP
    (``service_recovered``).

    ``unknown → down`` is an outage too; ``unknown → up`` (a check's first
    result) is silent. Its advisories are not sent to the notifiers
    (:data:`ALARM_RULES`): the check's own alarm already was.
    """

    name = "service_state"
    severity = "high"
    kinds = frozenset({"check"})
    actions = frozenset({"state_change"})

    def __init__(
        self,
        *,
        down_severity: str = "high",
        recovered_severity: str = "info",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, severity=down_severity)
        _check_severity("ServiceState", "recovered_severity", recovered_severity)
        self.down_severity = down_severity
        self.recovered_severity = recovered_severity
        self._down: OrderedDict[str, tuple[int, str]] = OrderedDict()  # check -> (ts, event id)

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if not isinstance(event, CheckEvent):
            return ()
        check = event.check
        if event.state == "down" and event.previous != "down":
            _touch(self._down, check, (event.ts, event.id), DEFAULT_MAX_KEYS)
            error = f": {event.error}" if event.error else ""
            return (
                Finding(
                    message=f"Service {check} is DOWN (was {event.previous}){error}",
                    evidence=(event.id,),
                    details={
                        "check": check,
                        "state": event.state,
                        "previous": event.previous,
                        "error": event.error,
                        "latency_ms": event.latency_ms,
                    },
                    severity=self.down_severity,
                    rule="service_down",
                ),
            )
        if event.state == "up" and event.previous == "down":
            since = self._down.pop(check, None)
            evidence: tuple[str, ...] = (event.id,)
            took = ""
            downtime: float | None = None
            if since is not None:
                evidence = (since[1], event.id)
                downtime = max(0.0, (event.ts - since[0]) / _US)
                took = f" after {format_duration(downtime)} down"
            latency = (
                f" (latency {event.latency_ms:.0f} ms)" if event.latency_ms is not None else ""
            )
            return (
                Finding(
                    message=f"Service {check} recovered{took}{latency}",
                    evidence=evidence,
                    details={
                        "check": check,
                        "state": event.state,
                        "previous": event.previous,
                        "downtime_s": None if downtime is None else round(downtime, 3),
                        "latency_ms": event.latency_ms,
                    },
                    severity=self.recovered_severity,
                    rule="service_recovered",
                ),
            )
        return ()


def default_rules() -> list[Rule]:
    """One instance of every built-in rule with its default parameters."""
    return [
        NewMachine(),
        NewCountry(),
        ImpossibleTravel(),
        Burst(),
        RevokedSessionReuse(),
        BotOnLogin(),
        ServiceState(),
    ]
