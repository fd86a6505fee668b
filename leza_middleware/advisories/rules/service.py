"""The rule that restates availability: a service went down, a service recovered."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from ...events import CheckEvent, Event
from .base import (
    DEFAULT_MAX_KEYS,
    US,
    Finding,
    Rule,
    RuleContext,
    check_severity,
    format_duration,
    touch,
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
        check_severity("ServiceState", "recovered_severity", recovered_severity)
        self.down_severity = down_severity
        self.recovered_severity = recovered_severity
        self._down: OrderedDict[str, tuple[int, str]] = OrderedDict()  # check -> (ts, event id)

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        if not isinstance(event, CheckEvent):
            return ()
        check = event.check
        if event.state == "down" and event.previous != "down":
            touch(self._down, check, (event.ts, event.id), DEFAULT_MAX_KEYS)
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
                downtime = max(0.0, (event.ts - since[0]) / US)
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
