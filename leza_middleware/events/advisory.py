"""ADVISORY: the findings of advisory rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .base import Event, iso_from_us, us_from_iso

__all__ = ["SEVERITIES", "AdvisoryEvent"]

#: Advisory severities, least to most urgent.
SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass(slots=True, kw_only=True, repr=False)
class AdvisoryEvent(Event):
    """A finding of an advisory rule: what happened, to whom, and the evidence.

    ``rule`` is the rule's name (``new_machine``, ``impossible_travel``, …),
    which is also the event's ``action``; ``evidence`` holds the ids of the
    events it was drawn from.
    """

    id: str
    ts: int
    rule: str
    severity: str
    message: str
    evidence: Sequence[str] = ()  # kept as a tuple
    performer_id: str | None = None
    ip: str | None = None
    details: Mapping[str, Any] | None = None  # copied to a dict; None becomes {}
    app: str = "app"
    # The request and session of the event that raised it (None when that
    # was not a request, e.g. a service check).
    request_id: str | None = None
    session_id: str | None = None

    kind: ClassVar[str] = "advisory"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}"
            )
        self.evidence = tuple(self.evidence)
        self.details = {} if self.details is None else dict(self.details)

    @property
    def action(self) -> str:  # type: ignore[override]  # the rule's name, read-only
        return self.rule

    @property
    def priority(self) -> bool:
        return True  # findings are few and are what an operator acts on

    def __repr__(self) -> str:
        return f"AdvisoryEvent({self.rule} {self.severity}: {self.message[:40]!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "kind": "advisory",
            "timestamp": iso_from_us(self.ts),
            "action": self.rule,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "evidence": list(self.evidence),
            "performer_id": self.performer_id,
            "ip": self.ip,
            "details": self.details,
            "request_id": self.request_id,
            "session_id": self.session_id,
            "app": self.app,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdvisoryEvent:
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            rule=data.get("rule") or data["action"],
            severity=data.get("severity", "info"),
            message=data.get("message", ""),
            evidence=data.get("evidence") or (),
            performer_id=data.get("performer_id"),
            ip=data.get("ip"),
            details=data.get("details"),
            app=data.get("app", "app"),
            request_id=data.get("request_id"),
            session_id=data.get("session_id"),
        )
