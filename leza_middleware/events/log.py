"""LOG: one record of the app's own ``logging``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import Event, iso_from_us, us_from_iso

__all__ = ["LOG_ACTIONS", "LogEvent", "log_action"]

#: ``logging`` level numbers to the action a LOG row is filtered by.
LOG_ACTIONS = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}


def log_action(level: int) -> str:
    """The action of a log record: its level name, lower case (custom levels round down)."""
    for number in (50, 40, 30, 20, 10):
        if level >= number:
            return LOG_ACTIONS[number]
    return "debug"


@dataclass(slots=True, kw_only=True, repr=False)
class LogEvent(Event):
    """One record of the app's own ``logging``, tagged with the request it was written in."""

    id: str
    ts: int
    level: int
    logger: str
    message: str
    exception: str | None = None
    request_id: str | None = None
    performer_id: str | None = None
    route: str | None = None
    origin: str = ""  # "module.py:42 in func"
    app: str = "app"
    action: str = field(init=False)  # from ``level``, see log_action()

    kind: ClassVar[str] = "log"

    def __post_init__(self) -> None:
        self.action = log_action(self.level)

    @property
    def priority(self) -> bool:
        return False  # a flood of log records must never grow the spill file

    def __repr__(self) -> str:
        return f"LogEvent({self.action} {self.logger}: {self.message[:40]!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "kind": "log",
            "timestamp": iso_from_us(self.ts),
            "action": self.action,
            "level": self.level,
            "logger": self.logger,
            "message": self.message,
            "exception": self.exception,
            "request_id": self.request_id,
            "performer_id": self.performer_id,
            "route": self.route,
            "origin": self.origin,
            "app": self.app,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogEvent:
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            level=int(data["level"]),
            logger=data.get("logger", ""),
            message=data.get("message", ""),
            exception=data.get("exception"),
            request_id=data.get("request_id"),
            performer_id=data.get("performer_id"),
            route=data.get("route"),
            origin=data.get("origin", ""),
            app=data.get("app", "app"),
        )
