"""AUDIT: who changed what, one link of a tamper-evident chain."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..performer import Performer
from .base import Event, iso_from_us, us_from_iso

__all__ = ["AuditEvent"]


@dataclass(slots=True, kw_only=True, repr=False)
class AuditEvent(Event):
    """Who changed what: one change of one entity, a link of a tamper-evident chain.

    ``chain``/``seq``/``prev_hash``/``hash`` are set by the recorder thread of
    the process that writes it (``audit/chain.py``): each process writes its own
    chain, numbered from 1, each row keyed-hashing the previous row's hash and
    its own canonical content.
    """

    id: str
    ts: int
    action: str
    entity_type: str
    entity_id: str
    actor: Performer | None = None
    before: Mapping[str, Any] | None = None  # copied to a dict
    after: Mapping[str, Any] | None = None  # copied to a dict
    # Copied to a dict; None (what to_dict() of old rows may hold) becomes {}.
    diff: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    request_id: str | None = None
    client_ip: str | None = None
    app: str = "app"
    chain: str = ""
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""
    #: The public id of the session the change was made in (a keyed hash, as
    #: on access events), None outside a signed-in request.
    session_id: str | None = None

    kind: ClassVar[str] = "audit"

    def __post_init__(self) -> None:
        # Own copies: the caller's dicts may change after the event is queued.
        self.before = None if self.before is None else dict(self.before)
        self.after = None if self.after is None else dict(self.after)
        self.diff = {} if self.diff is None else dict(self.diff)

    @property
    def priority(self) -> bool:
        return True  # an audit row is never dropped for lack of memory: a gap breaks the chain

    @property
    def actor_id(self) -> str | None:
        return None if self.actor is None else self.actor.id

    def __repr__(self) -> str:
        return f"AuditEvent({self.action} {self.entity_type}:{self.entity_id} #{self.seq})"

    def content(self) -> dict[str, Any]:
        """What the chain hash covers: everything but the hash itself.

        ``session_id`` only when set: rows written before it was recorded
        (and rows made outside a session) hash as they always did.
        """
        content: dict[str, Any] = {
            "id": self.id,
            "ts": self.ts,
            "app": self.app,
            "chain": self.chain,
            "seq": self.seq,
            "action": self.action,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "actor": None if self.actor is None else self.actor.to_dict(),
            "before": self.before,
            "after": self.after,
            "diff": self.diff,
            "reason": self.reason,
            "request_id": self.request_id,
            "client_ip": self.client_ip,
            "prev_hash": self.prev_hash,
        }
        if self.session_id is not None:
            content["session_id"] = self.session_id
        return content

    def to_dict(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "kind": "audit",
            "timestamp": iso_from_us(self.ts),
            "action": self.action,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "actor": None if self.actor is None else self.actor.to_dict(),
            "performer": None if self.actor is None else self.actor.to_dict(),
            "before": self.before,
            "after": self.after,
            "diff": self.diff,
            "reason": self.reason,
            "request_id": self.request_id,
            "session_id": self.session_id,
            "ip": self.client_ip,
            "app": self.app,
            "chain": self.chain,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        actor = data.get("actor")
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            action=data["action"],
            entity_type=data["entity_type"],
            entity_id=data["entity_id"],
            actor=Performer.from_dict(actor) if actor else None,
            before=data.get("before"),
            after=data.get("after"),
            diff=data.get("diff") or {},
            reason=data.get("reason"),
            request_id=data.get("request_id"),
            client_ip=data.get("ip"),
            app=data.get("app", "app"),
            chain=data.get("chain", ""),
            seq=int(data.get("seq") or 0),
            prev_hash=data.get("prev_hash", ""),
            hash=data.get("hash", ""),
            session_id=data.get("session_id"),
        )
