"""The advisory engine: runs the rules over each batch the recorder prepared.

``engine.process(events)`` is called on the recorder thread with the events of
one batch, oldest first, after enrichment (device and geo are set). For each
event it calls only the rules whose ``kinds``/``actions`` match (a dict lookup
per event decides; an ordinary access event usually reaches one cheap rule or
none), then folds logins and session starts into the per-performer
:class:`~leza_middleware.advisories.history.History`. It returns the
:class:`~leza_middleware.events.AdvisoryEvent` objects to store; it never
raises because of a rule or of storage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import LezaConfigError
from ..events import SEVERITIES, AccessEvent, AdvisoryEvent, Event, SessionEvent
from ..ids import new_event_id
from ..storage.base import Storage
from .history import History
from .rules import Finding, Rule, RuleContext, default_rules

__all__ = ["AdvisoryEngine"]

log = logging.getLogger("leza_middleware.advisories")

#: A failing rule is logged at most once per this many seconds (it is always counted).
LOG_EVERY_S = 60.0
#: Default days of login history hydrated from storage per performer.
DEFAULT_HISTORY_DAYS = 90.0
_ROUTE_CACHE_MAX = 4096

# (rules for every event of the key, rules for bots only, fold into the history)
_Entry = tuple[tuple[Rule, ...], tuple[Rule, ...], bool]
_SKIP: _Entry = ((), (), False)


def _frozen(owner: str, attr: str, value: Any, *, allow_none: bool) -> frozenset[str] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise LezaConfigError(
            f"advisory rule {owner}: {attr} must be a set of strings"
            + (" or None" if allow_none else "")
            + f", got {value!r}"
        )
    items = frozenset(value)
    if not all(isinstance(x, str) for x in items):
        raise LezaConfigError(f"advisory rule {owner}: {attr} must hold strings, got {value!r}")
    if not items and not allow_none:
        raise LezaConfigError(f"advisory rule {owner}: {attr} must not be empty")
    return items


def _request_of(event: Event) -> tuple[str | None, str | None]:
    """(request id, session id) of the event an advisory is raised on: what
    ties the advisory to the request and session views."""
    if type(event) is AccessEvent:
        return event.row[10], event.row[23]
    if type(event) is SessionEvent:
        return None, event.session_id
    return None, None


class AdvisoryEngine:
    """Runs advisory rules over the event stream.

    ``rules``: the rules (default: :func:`default_rules`). ``storage``: where
    the per-performer history is hydrated from (None: memory only).
    ``app_name``: stored in each advisory. ``clock``: seconds since the epoch
    (times the rate limit of error logs, history refresh and back-off).
    ``history_days``: days of logins hydrated per performer (default: the
    largest ``history_days`` of the rules, at least 90). ``history``: a
    ready :class:`History` to use instead of building one.
    """

    def __init__(
        self,
        rules: Iterable[Rule] | None = None,
        storage: Storage | None = None,
        app_name: str = "app",
        clock: Callable[[], float] = time.time,
        *,
        history: History | None = None,
        history_days: float | None = None,
        max_performers: int = 10_000,
    ) -> None:
        if isinstance(rules, Rule):
            raise LezaConfigError(
                f"AdvisoryEngine(rules=...) takes a list of rules, got one rule: [{rules!r}]?"
            )
        chosen = default_rules() if rules is None else list(rules)
        filters: list[tuple[Rule, frozenset[str], frozenset[str] | None]] = []
        names: set[str] = set()
        for rule in chosen:
            if not isinstance(rule, Rule):
                raise LezaConfigError(
                    f"advisory rules must be Rule instances, got {rule!r} "
                    "(subclass leza_middleware.advisories.Rule)"
                )
            owner = type(rule).__name__
            if not isinstance(rule.name, str) or not rule.name.strip():
                raise LezaConfigError(f"advisory rule {owner} has no name (set `name = ...`)")
            if rule.name in names:
                raise LezaConfigError(
                    f"two advisory rules are named {rule.name!r}: pass name=... to tell them apart"
                )
            names.add(rule.name)
            if rule.severity not in SEVERITIES:
                raise LezaConfigError(
                    f"advisory rule {rule.name!r}: severity must be one of "
                    f"{', '.join(SEVERITIES)}, got {rule.severity!r}"
                )
            kinds = _frozen(rule.name, "kinds", rule.kinds, allow_none=False)
            assert kinds is not None
            actions = _frozen(rule.name, "actions", rule.actions, allow_none=True)
            filters.append((rule, kinds, actions))
        self.rules: tuple[Rule, ...] = tuple(chosen)
        self._filters = tuple(filters)
        self.storage = storage
        self.app_name = app_name
        self.clock = clock
        self._uses_history = any(r.uses_history for r in self.rules)
        if history is None:
            days = history_days
            if days is None:
                days = max([DEFAULT_HISTORY_DAYS, *(float(r.history_days) for r in self.rules)])
            history = History(storage, days=days, max_performers=max_performers, clock=clock)
        self.history = history
        self._routes: dict[tuple[str, str], _Entry] = {}
        # The same, for access events keyed by action alone (no key tuple per event).
        self._access: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._events = 0
        self._advisories = 0
        self._record_errors = 0
        ordered = [r.name for r in self.rules]
        self._findings: dict[str, int] = dict.fromkeys(ordered, 0)
        self._errors: dict[str, int] = dict.fromkeys(ordered, 0)
        self._logged_at: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"AdvisoryEngine(rules={[r.name for r in self.rules]!r})"

    # -- the hot path

    def _route(self, key: tuple[str, str]) -> _Entry:
        kind, action = key
        matching = [
            rule
            for rule, kinds, actions in self._filters
            if kind in kinds and (actions is None or action in actions)
        ]
        rules = tuple(r for r in matching if not r.bots_only)
        bot_rules = tuple(r for r in matching if r.bots_only)
        record = self._uses_history and key in (("access", "login"), ("session", "session_start"))
        entry = (rules, bot_rules, record) if rules or bot_rules or record else _SKIP
        if len(self._routes) >= _ROUTE_CACHE_MAX:  # actions are few; bound it anyway
            self._routes.clear()
            self._access.clear()
        self._routes[key] = entry
        if kind == "access":
            self._access[action] = entry
        return entry

    def process(self, events: Sequence[Event]) -> list[AdvisoryEvent]:
        """Run the rules over one batch (oldest first); return the advisories found.

        Each advisory's ``ts`` is that of the event that triggered it, its
        ``evidence`` the ids of the events it rests on. A rule that raises is
        counted (``stats()["rule_errors"]``) and logged at most once a minute;
        its findings for that event are dropped and the other rules still run.
        """
        if not events:
            return []
        out: list[AdvisoryEvent] = []
        with self._lock:
            self._events += len(events)
            routes = self._routes
            access = self._access
            ctx: RuleContext | None = None
            for event in events:
                if type(event) is AccessEvent:
                    # The hot path: most events are plain accesses that reach no rule
                    # or only the bot rules, which a non-bot device skips here.
                    entry = access.get(event.row[2])
                    if entry is None:
                        entry = self._route(("access", event.row[2]))
                    if entry is _SKIP:
                        continue
                    rules, bot_rules, record = entry
                    if bot_rules:
                        device = event.device
                        if device is not None and device.bot_name is not None:
                            rules += bot_rules
                        elif not rules and not record:
                            continue
                else:
                    key = (event.kind, event.action)
                    entry = routes.get(key)
                    if entry is None:
                        entry = self._route(key)
                    if entry is _SKIP:
                        continue
                    rules, bot_rules, record = entry
                    if bot_rules:
                        device = getattr(event, "device", None)
                        if device is not None and device.bot_name is not None:
                            rules += bot_rules
                        elif not rules and not record:
                            continue
                if ctx is None:
                    ctx = RuleContext(
                        self.history, events, clock=self.clock, app_name=self.app_name
                    )
                for rule in rules:
                    self._run(rule, event, ctx, out)
                if record:
                    try:
                        self.history.record(event, ctx.batch_login_ids())
                    except Exception as exc:  # never let bookkeeping break the recorder
                        self._record_errors += 1
                        self._log_once("history", "advisories: could not record %r: %r", event, exc)
        return out

    def _run(self, rule: Rule, event: Event, ctx: RuleContext, out: list[AdvisoryEvent]) -> None:
        try:
            found = rule.observe(event, ctx)
            if not found:
                return
            made: list[AdvisoryEvent] = []
            request_id, session_id = _request_of(event)
            for finding in found:
                if not isinstance(finding, Finding):
                    raise TypeError(
                        f"observe() must yield Finding objects, got {type(finding).__name__}"
                    )
                ts = event.ts
                made.append(
                    AdvisoryEvent(
                        id=new_event_id(ts),
                        ts=ts,
                        rule=finding.rule or rule.name,
                        severity=finding.severity or rule.severity,
                        message=finding.message,
                        evidence=finding.evidence or (event.id,),
                        performer_id=finding.performer_id,
                        ip=finding.ip,
                        details=finding.details,
                        app=self.app_name,
                        request_id=request_id,
                        session_id=session_id,
                    )
                )
        except BaseException as exc:  # a rule's sys.exit() must not stop the recorder thread
            self._errors[rule.name] = self._errors.get(rule.name, 0) + 1
            self._log_once(
                rule.name,
                "advisory rule %r failed on %r (%d error(s) so far; logged at most once a "
                "minute per rule)",
                rule.name,
                event,
                self._errors[rule.name],
                exc_info=exc,
            )
            return
        if made:
            self._findings[rule.name] = self._findings.get(rule.name, 0) + len(made)
            self._advisories += len(made)
            out.extend(made)

    def _log_once(
        self, key: str, msg: str, *args: Any, exc_info: BaseException | None = None
    ) -> None:
        now = self.clock()
        last = self._logged_at.get(key)
        if last is not None and now - last < LOG_EVERY_S:
            return
        self._logged_at[key] = now
        log.error(msg, *args, exc_info=exc_info)

    # -- introspection

    def stats(self) -> dict[str, Any]:
        """Counters: ``events`` seen, ``advisories`` made, ``findings`` and
        ``rule_errors`` per rule name, ``record_errors``, and ``history``
        (``performers``, ``hydrations``, ``hydration_errors``, ``evictions``)."""
        with self._lock:
            return {
                "events": self._events,
                "advisories": self._advisories,
                "findings": dict(self._findings),
                "rule_errors": dict(self._errors),
                "record_errors": self._record_errors,
                "history": self.history.stats(),
            }
