"""A check's state and its alarms, as pure logic (the monitor feeds it probe results).

State: ``unknown`` until the first result; the first success makes it ``up``
(silently); ``retries`` consecutive failures make it ``down``; ``retries``
consecutive successes bring a ``down`` check ``up`` again. A state therefore
holds for ``retries`` probes before it can change, so one flapping probe never
becomes an alarm storm.

Alarms (DESIGN.md): only a change of state alerts — ``unknown → up`` is
silent, ``unknown → down`` and ``up → down`` send ``down``, ``down → up``
sends ``recovered`` — plus ``still_down`` every ``resend`` seconds while down.
A maintenance window silences alarms: a check that went down inside one
alerts when the window closes if it is still down, and a check whose DOWN
alarm was never sent recovers silently.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AlarmState", "Tracker"]


@dataclass
class Tracker:
    """Consecutive results → state."""

    retries: int
    state: str = "unknown"
    fails: int = 0
    oks: int = 0

    def apply(self, ok: bool) -> str:
        """Count one result; return the state before it."""
        previous = self.state
        if ok:
            self.oks += 1
            self.fails = 0
            if previous == "unknown" or (previous == "down" and self.oks >= self.retries):
                self.state = "up"
        else:
            self.fails += 1
            self.oks = 0
            if previous != "down" and self.fails >= self.retries:
                self.state = "down"
        return previous


@dataclass
class AlarmState:
    """What was told to whom: decides the notification (if any) after each probe."""

    resend: float | None = None
    alerted: bool = False  # a DOWN alarm went out for the current outage
    last_alert: float | None = None  # when (seconds, monotonic or wall: the caller's clock)

    def decide(self, previous: str, state: str, now: float, silenced: bool) -> str | None:
        """``"down"``, ``"still_down"``, ``"recovered"`` or None for this probe."""
        if state == "down":
            if previous != "down":
                self.alerted = False  # a new outage
            if silenced:
                return None
            if not self.alerted:
                self.alerted, self.last_alert = True, now
                return "down"
            if self.resend is not None and now - (self.last_alert or now) >= self.resend:
                self.last_alert = now
                return "still_down"
            return None
        if previous == "down" and state == "up":
            told = self.alerted
            self.alerted, self.last_alert = False, None
            return "recovered" if told else None
        return None
