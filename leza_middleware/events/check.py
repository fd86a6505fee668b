"""Availability: one probe of a service check and the check's state after it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import Event, iso_from_us, us_from_iso

__all__ = ["CHECK_STATES", "CheckEvent"]

#: Availability states: ``unknown`` until a check has held a result ``retries`` times.
CHECK_STATES = ("unknown", "up", "down")


@dataclass(slots=True, kw_only=True, repr=False)
class CheckEvent(Event):
    """One probe of an availability check and the check's state after it.

    ``action`` is ``"probe"``, or ``"state_change"`` when this probe moved the
    state (``previous`` → ``state``); uptime is computed over the states.
    """

    id: str
    ts: int
    check: str
    ok: bool  # kept as a bool
    state: str
    previous: str
    latency_ms: float | None = None
    error: str | None = None
    app: str = "app"
    action: str = field(init=False)  # from ``state`` and ``previous``

    kind: ClassVar[str] = "check"

    def __post_init__(self) -> None:
        if self.state not in CHECK_STATES or self.previous not in CHECK_STATES:
            raise ValueError(f"check states are {', '.join(CHECK_STATES)}")
        self.ok = bool(self.ok)
        self.action = "state_change" if self.state != self.previous else "probe"

    @property
    def priority(self) -> bool:
        return self.action == "state_change"

    @property
    def performer_id(self) -> str:
        """A check's subject is the check: the ``performer`` filter of queries
        selects one check's probes by its name."""
        return self.check

    def __repr__(self) -> str:
        return f"CheckEvent({self.check} {self.previous}->{self.state} ok={self.ok})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "kind": "check",
            "timestamp": iso_from_us(self.ts),
            "action": self.action,
            "check": self.check,
            "ok": self.ok,
            "state": self.state,
            "previous": self.previous,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "app": self.app,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckEvent:
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            check=data["check"],
            ok=bool(data["ok"]),
            state=data["state"],
            previous=data.get("previous", "unknown"),
            latency_ms=data.get("latency_ms"),
            error=data.get("error"),
            app=data.get("app", "app"),
        )
