"""Rules about abuse: bursts of denials and failed logins, a revoked session
reused, a bot on a login route."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence

from ...enrich.cache import bounded_put
from ...errors import LezaConfigError
from ...events import AccessEvent, Event, iso_from_us
from ...sessions.registry import REVOKED_REASON
from .base import (
    DEFAULT_MAX_KEYS,
    US,
    Cooldown,
    Finding,
    Rule,
    RuleContext,
    format_duration,
    number_param,
    performer_label,
    strings_param,
    touch,
)

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
        self.actions = frozenset(strings_param("Burst", "actions", actions, "('login_failed',)"))
        self.threshold = int(number_param("Burst", "threshold", threshold, minimum=1, integer=True))
        self.window = number_param("Burst", "window", window, exclusive=True)
        keys = strings_param("Burst", "by", by, "('performer', 'ip')")
        unknown = sorted(set(keys) - {"performer", "ip"})
        if unknown:
            raise LezaConfigError(
                f"Burst(by=...) takes 'performer' and/or 'ip', got {', '.join(map(repr, unknown))}"
            )
        self.by = tuple(dict.fromkeys(keys))
        self.cooldown = (
            self.window if cooldown is None else number_param("Burst", "cooldown", cooldown)
        )
        self.max_evidence = int(
            number_param("Burst", "max_evidence", max_evidence, minimum=1, integer=True)
        )
        self.max_keys = int(number_param("Burst", "max_keys", max_keys, minimum=1, integer=True))
        self._window_us = int(self.window * US)
        self._size = max(self.threshold, self.max_evidence)
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._cooldown = Cooldown(self.cooldown, self.max_keys)

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
            touch(self._windows, key, win, self.max_keys)
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
            span = (inside[-1][0] - inside[0][0]) / US
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
        self.cooldown = number_param("RevokedSessionReuse", "cooldown", cooldown)
        limit = int(
            number_param("RevokedSessionReuse", "max_keys", max_keys, minimum=1, integer=True)
        )
        self._cooldown = Cooldown(self.cooldown, limit)

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
        items = strings_param("BotOnLogin", "routes", routes, "('login', 'auth/token')")
        self.routes = items
        self._runs = tuple(r for r in (_path_segments(x) for x in items) if r)
        if len(self._runs) != len(items):
            raise LezaConfigError(
                f"BotOnLogin(routes=...) entries must name path segments, got {routes!r}"
            )
        self.cooldown = number_param("BotOnLogin", "cooldown", cooldown)
        limit = int(number_param("BotOnLogin", "max_keys", max_keys, minimum=1, integer=True))
        self._cooldown = Cooldown(self.cooldown, limit)
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
