"""SESSION: changes to one user session, and the record they fold into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..performer import Performer
from .base import Event, iso_from_us, iso_ms_from_us, us_from_iso
from .dimensions import Device, Geo

__all__ = ["END_REASONS", "SessionEvent", "SessionRecord"]

#: Why a session ended.
END_REASONS = frozenset({"logout", "idle_timeout", "absolute_timeout", "revoked"})

#: The actions of a session change.
SESSION_ACTIONS = ("session_start", "session_seen", "session_end")


@dataclass(slots=True, kw_only=True, repr=False)
class SessionEvent(Event):
    """A change to one user session: it started, was seen again, or ended.

    Storage folds these into one record per session (see :class:`SessionRecord`):
    the earliest start and the first non-empty facts win, ``last_seen`` only
    moves forward and the first end sticks. Folding is idempotent, so a
    replayed or duplicated change stores nothing twice.
    """

    id: str
    ts: int
    action: str
    session_id: str
    app: str = "app"
    performer: Performer | None = None
    device: Device | None = None
    geo: Geo | None = None
    ip: str = ""
    machine_id: str | None = None
    end_reason: str | None = None

    kind: ClassVar[str] = "session"

    def __post_init__(self) -> None:
        if self.action not in SESSION_ACTIONS:
            raise ValueError(f"not a session change: {self.action!r}")
        if self.action == "session_end" and self.end_reason not in END_REASONS:
            raise ValueError(f"end_reason must be one of {sorted(END_REASONS)}")

    def __repr__(self) -> str:
        return f"SessionEvent({self.action} {self.session_id[:12]}…)"

    def to_dict(self) -> dict[str, Any]:
        device = self.device
        return {
            "_id": self.id,
            "kind": "session",
            "timestamp": iso_from_us(self.ts),
            "action": self.action,
            "session_id": self.session_id,
            "app": self.app,
            "user_agent": device.user_agent if device is not None else "",
            "device_info": device.to_dict() if device is not None else None,
            "geo": self.geo.to_dict(self.ip) if self.geo is not None else None,
            "ip": self.ip,
            "machine_identifier": self.machine_id,
            "performer": self.performer.to_dict() if self.performer else None,
            "end_reason": self.end_reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionEvent:
        info = data.get("device_info")
        geo = data.get("geo")
        perf = data.get("performer")
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            action=data["action"],
            session_id=data["session_id"],
            app=data.get("app", "app"),
            performer=Performer.from_dict(perf) if perf else None,
            device=Device.from_dict(data.get("user_agent") or "", info) if info else None,
            geo=Geo.from_dict(geo) if geo else None,
            ip=data.get("ip", ""),
            machine_id=data.get("machine_identifier"),
            end_reason=data.get("end_reason"),
        )


@dataclass(slots=True)
class SessionRecord:
    """One user session as stored: the SESSION tab's row.

    ``to_dict()`` is the session record of DESIGN.md field for field (``_id``,
    ``browser``, ``os``, ``device``, ``bot``, ``ip``, ``geoLocationInfoOfIp``,
    ``machine_identifier``, ``performer``, ``session_start``), plus
    ``last_seen``, ``ended_at``, ``end_reason``, ``active`` and ``app``.
    """

    id: str
    app: str
    session_start: int
    last_seen: int
    ip: str = ""
    machine_id: str | None = None
    performer: Performer | None = None
    device: Device | None = None
    geo: Geo | None = None
    ended_at: int | None = None
    end_reason: str | None = None

    kind: ClassVar[str] = "session"

    @property
    def ts(self) -> int:  # sessions list newest first by their start
        return self.session_start

    @property
    def active(self) -> bool:
        return self.ended_at is None

    @property
    def performer_id(self) -> str | None:
        return None if self.performer is None else self.performer.id

    def apply(self, change: SessionEvent) -> None:
        """Fold one change in (the same rules as the SQL upsert)."""
        self.session_start = min(self.session_start, change.ts)
        self.last_seen = max(self.last_seen, change.ts)
        if change.action == "session_start":
            self.ip = self.ip or change.ip
            self.machine_id = self.machine_id or change.machine_id
            self.performer = self.performer or change.performer
            self.device = self.device or change.device
            self.geo = self.geo or change.geo
        if change.action == "session_end" and self.ended_at is None:
            self.ended_at = change.ts
            self.end_reason = change.end_reason

    @classmethod
    def started_by(cls, change: SessionEvent) -> SessionRecord:
        record = cls(id=change.session_id, app=change.app, session_start=change.ts,
                     last_seen=change.ts)  # fmt: skip
        record.apply(change)
        return record

    def to_dict(self) -> dict[str, Any]:
        device = self.device
        out: dict[str, Any] = {"_id": self.id}
        if device is not None:
            out.update(device.to_dict())
        else:
            out.update({"browser": None, "os": None, "device": None, "bot": None})
        out["ip"] = self.ip
        out["geoLocationInfoOfIp"] = self.geo.to_dict(self.ip) if self.geo else None
        out["machine_identifier"] = self.machine_id
        out["performer"] = self.performer.to_dict() if self.performer else None
        out["session_start"] = iso_ms_from_us(self.session_start)
        out["last_seen"] = iso_ms_from_us(self.last_seen)
        out["ended_at"] = None if self.ended_at is None else iso_ms_from_us(self.ended_at)
        out["end_reason"] = self.end_reason
        out["active"] = self.active
        out["app"] = self.app
        out["user_agent"] = device.user_agent if device is not None else ""
        return out
