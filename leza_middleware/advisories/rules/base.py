"""The rules' common ground: :class:`Rule` (what users subclass), :class:`Finding`,
:class:`RuleContext`, and the helpers the built-in rules share (parameter checks,
labels, distances, bounded per-key memories).

A rule looks at one event at a time (:meth:`Rule.observe`) and yields
:class:`Finding` objects; the engine turns each finding into an
:class:`~leza_middleware.events.AdvisoryEvent`. The engine calls a rule only
for events of its ``kinds`` whose ``action`` is in its ``actions`` (``None``:
every action), so an ordinary access event costs a rule nothing.
"""

from __future__ import annotations

import abc
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import LezaConfigError
from ...events import SEVERITIES, Device, Event
from ...performer import Performer
from ..history import History, PerformerState

US = 1_000_000
#: The advisories that restate an availability alarm (``ServiceState``'s): the
#: monitor already sends the check's own ``down`` / ``recovered`` notification for
#: the same transition (and keeps quiet in a maintenance window), so these are
#: stored and shown but never sent to the notifiers a second time.
ALARM_RULES = frozenset({"service_down", "service_recovered"})
DAY_US = 86_400 * US
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
            check_severity(type(self).__name__, "severity", severity)
            self.severity = severity

    @abc.abstractmethod
    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        """Findings about ``event`` (usually none: return ``()``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, severity={self.severity!r})"


# --------------------------------------------------------------------------- helpers


def check_severity(owner: str, param: str, value: Any) -> None:
    if value not in SEVERITIES:
        raise LezaConfigError(
            f"{owner}({param}=...) must be one of {', '.join(SEVERITIES)}, got {value!r}"
        )


def number_param(
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


def strings_param(owner: str, param: str, value: Any, example: str) -> tuple[str, ...]:
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


def device_label(device: Device | None) -> str:
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


def touch(cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


class Cooldown:
    """Remembers, per key, when a rule last fired (bounded, least recently used out)."""

    __slots__ = ("_fired", "limit", "period_us")

    def __init__(self, period_s: float, limit: int) -> None:
        self.period_us = int(period_s * US)
        self.limit = limit
        self._fired: OrderedDict[Any, int] = OrderedDict()

    def ready(self, key: Any, ts: int) -> bool:
        last = self._fired.get(key)
        return last is None or self.period_us <= 0 or abs(ts - last) >= self.period_us

    def fire(self, key: Any, ts: int) -> None:
        touch(self._fired, key, ts, self.limit)

    def __len__(self) -> int:
        return len(self._fired)


# --------------------------------------------------------------------------- history rules
