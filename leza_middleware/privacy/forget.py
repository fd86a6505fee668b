"""Erasure (``leza.forget``): one person's events deleted, their sessions ended and
scrubbed, their performer rows deleted, and their audit rows *redacted* under
signed redaction entries so the chain still verifies (``docs/privacy.md``,
"How erasure keeps the audit chain verifiable"). The helpers here are shared
with the storage backends, which apply an erasure to what they hold.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from ..audit.chain import canonical, row_hash
from ..errors import LezaError
from ..events import (
    AccessEvent,
    AdvisoryEvent,
    AuditEvent,
    Event,
    LogEvent,
    SessionEvent,
    SessionRecord,
)
from ..performer import Performer
from ..storage.capabilities import Capability, require

if TYPE_CHECKING:
    from ..ready import ReadyStorage
    from ..sessions.cookies import Keyring

__all__ = [
    "FORGOTTEN",
    "Erasure",
    "ForgetReport",
    "compile_identifiers",
    "forget_event",
    "identifiers_of",
    "plan_redactions",
    "redact_audit_event",
    "redaction_is_valid",
    "scrub_json",
    "scrub_session",
    "scrub_text",
    "sign_redaction",
]

#: What replaces a forgotten person's values.
FORGOTTEN = "[Forgotten]"
_MIN_SCRUB = 4  # shorter identifiers would match unrelated text
_REDACTION_DOMAIN = b"leza-audit-redaction-v1\0"
_REDACTION_SIGNED = ("id", "chain", "seq", "hash", "redacted_hash", "redacted_at")


@dataclass(frozen=True)
class ForgetReport:
    """What :meth:`Leza.forget` changed (counts of rows)."""

    access: int = 0  # access events deleted
    logs: int = 0  # log records deleted (the person's, and those of their requests)
    advisories: int = 0  # advisories about them deleted
    sessions: int = 0  # sessions scrubbed (ended first when active)
    revoked: int = 0  # of those, sessions that were active and were revoked
    performers: int = 0  # identity rows deleted
    scrubbed: int = 0  # other rows whose text mentioned them, scrubbed
    audit_redacted: int = 0  # audit rows redacted under a signed redaction entry
    audit_unverified: int = 0  # audit rows redacted that did not verify before (no entry)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def sign_redaction(key: bytes, entry: Mapping[str, Any]) -> str:
    body = canonical({name: entry[name] for name in _REDACTION_SIGNED})
    return hmac.new(key, _REDACTION_DOMAIN + body, hashlib.sha256).hexdigest()


def redaction_is_valid(key: bytes, entry: Mapping[str, Any]) -> bool:
    try:
        expected = sign_redaction(key, entry)
    except (KeyError, TypeError):
        return False
    return hmac.compare_digest(expected, str(entry.get("sig") or ""))


def _matcher(identifiers: Iterable[str]) -> re.Pattern[str] | None:
    idents = sorted({i for i in identifiers if len(i) >= _MIN_SCRUB}, key=len, reverse=True)
    if not idents:
        return None
    return re.compile("|".join(map(re.escape, idents)), re.IGNORECASE)


def scrub_text(text: str | None, rx: re.Pattern[str] | None) -> str | None:
    if text is None or rx is None:
        return text
    return rx.sub(FORGOTTEN, text)


def scrub_json(value: Any, rx: re.Pattern[str] | None) -> Any:
    """Every string (keys too) in a JSON-like value, scrubbed."""
    if rx is None:
        return value
    if isinstance(value, str):
        return rx.sub(FORGOTTEN, value)
    if isinstance(value, Mapping):
        return {rx.sub(FORGOTTEN, str(k)): scrub_json(v, rx) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_json(v, rx) for v in value]
    return value


def redact_audit_event(
    e: AuditEvent, performer_id: str, rx: re.Pattern[str] | None, pseudonym: str
) -> AuditEvent | None:
    """The row with the person's data replaced, or None when it holds none.

    Their actor record becomes ``{"id": pseudonym, "name": "[Forgotten]"}``
    (one random pseudonym per erasure: their changes still read as one
    person's, nobody's in particular) and the row's client IP goes; any string
    mentioning them (before/after/diff values, reason, entity id) is scrubbed.
    ``chain``/``seq``/``prev_hash``/``hash`` are kept: the links stay intact.
    """
    actor = e.actor
    client_ip = e.client_ip
    if actor is not None and actor.id == performer_id:
        actor = Performer(id=pseudonym, name=FORGOTTEN)
        client_ip = None
    elif actor is not None and rx is not None and rx.search(actor.to_json()) is not None:
        # Someone else's identity that mentions them (an organisation name…).
        actor = Performer.from_dict(scrub_json(actor.to_dict(), rx))
    entity_id = FORGOTTEN if e.entity_id == performer_id else scrub_text(e.entity_id, rx)
    before = scrub_json(e.before, rx)
    after = scrub_json(e.after, rx)
    diff = scrub_json(e.diff, rx)
    reason = scrub_text(e.reason, rx)
    if (actor, client_ip, entity_id, before, after, diff, reason) == (
        e.actor, e.client_ip, e.entity_id, e.before, e.after, e.diff, e.reason
    ):  # fmt: skip
        return None
    return AuditEvent(
        id=e.id, ts=e.ts, action=e.action, entity_type=e.entity_type,
        entity_id=entity_id or "", actor=actor, before=before, after=after, diff=diff,
        reason=reason, request_id=e.request_id, client_ip=client_ip, app=e.app,
        chain=e.chain, seq=e.seq, prev_hash=e.prev_hash, hash=e.hash, session_id=e.session_id,
    )  # fmt: skip


def plan_redactions(
    rows: Iterable[AuditEvent],
    existing: Iterable[Mapping[str, Any]],
    performer_id: str,
    identifiers: Iterable[str],
    key: bytes,
    now: int,
) -> tuple[list[AuditEvent], list[dict[str, Any]], int]:
    """(redacted rows, their signed redaction entries, how many did not verify).

    An entry vouches for a redacted row: the row's chain hash (the HMAC of its
    original content, still the next row's ``prev_hash``) and the HMAC of its
    redacted content, signed with the audit key. Only a row that verifies now
    (as written, or as an earlier redaction vouched for it) gets one: signing
    a row that was already tampered with would launder the tampering. Such a
    row is still scrubbed, and still reported as edited.
    """
    rx = _matcher(identifiers)
    pseudonym = "forgotten:" + os.urandom(4).hex()
    vouched = {str(m["id"]): m for m in existing if redaction_is_valid(key, m)}
    out: list[AuditEvent] = []
    entries: list[dict[str, Any]] = []
    unverified = 0
    for e in rows:
        new = redact_audit_event(e, performer_id, rx, pseudonym)
        if new is None:
            continue
        current = row_hash(key, e)
        prior = vouched.get(e.id)
        intact = hmac.compare_digest(current, e.hash) or (
            prior is not None
            and str(prior["hash"]) == e.hash
            and hmac.compare_digest(str(prior["redacted_hash"]), current)
        )
        out.append(new)
        if not intact:
            unverified += 1
            continue
        entry: dict[str, Any] = {
            "id": e.id, "chain": e.chain, "seq": e.seq, "hash": e.hash,
            "redacted_hash": row_hash(key, new), "redacted_at": now,
        }  # fmt: skip
        entry["sig"] = sign_redaction(key, entry)
        entries.append(entry)
    return out, entries, unverified


def forget_event(
    e: Event, performer_id: str, rx: re.Pattern[str] | None, request_ids: set[str]
) -> Event | None:
    """One stored event after erasing ``performer_id`` (memory and JSON Lines backends).

    None: delete it. The same object: unchanged. Audit rows are left alone
    (they are redacted separately, under signed entries).
    """
    if isinstance(e, AccessEvent):
        if e.performer_id == performer_id:
            return None
        endpoint, reason = scrub_text(e.endpoint, rx), scrub_text(e.reason, rx)
        if endpoint == e.endpoint and reason == e.reason:
            return e
        row = list(e.row)
        row[4], row[9] = endpoint, reason
        return AccessEvent(tuple(row), e.device, e.geo, e.performer)
    if isinstance(e, LogEvent):
        if e.performer_id == performer_id or (e.request_id in request_ids):
            return None
        message, exception = scrub_text(e.message, rx), scrub_text(e.exception, rx)
        if message == e.message and exception == e.exception:
            return e
        return LogEvent(
            id=e.id, ts=e.ts, level=e.level, logger=e.logger, message=message or "",
            exception=exception, request_id=e.request_id, performer_id=e.performer_id,
            route=e.route, origin=e.origin, app=e.app,
        )  # fmt: skip
    if isinstance(e, AdvisoryEvent):
        if e.performer_id == performer_id:
            return None
        message, details = scrub_text(e.message, rx), scrub_json(e.details, rx)
        if message == e.message and details == e.details:
            return e
        return AdvisoryEvent(
            id=e.id, ts=e.ts, rule=e.rule, severity=e.severity, message=message or "",
            evidence=e.evidence, performer_id=e.performer_id, ip=e.ip, details=details,
            app=e.app, request_id=e.request_id, session_id=e.session_id,
        )  # fmt: skip
    if isinstance(e, SessionEvent) and e.performer is not None and e.performer.id == performer_id:
        return SessionEvent(
            id=e.id, ts=e.ts, action=e.action, session_id=e.session_id, app=e.app,
            end_reason=e.end_reason,
        )  # fmt: skip
    return e


def scrub_session(record: SessionRecord) -> SessionRecord:
    """A session record without who, where from, or on what device."""
    return replace(record, performer=None, ip="", machine_id=None, device=None, geo=None)


def identifiers_of(
    performer_id: str, performers: Iterable[Performer], extra: Iterable[str] = ()
) -> set[str]:
    """The strings erasure scrubs from free text: the id, emails, names, and ``extra``."""
    found = {performer_id, *(str(x) for x in extra)}
    for p in performers:
        found.update(v for v in (p.email, p.name) if v)
    return {x.strip() for x in found if len(x.strip()) >= _MIN_SCRUB}


def compile_identifiers(identifiers: Iterable[str]) -> re.Pattern[str] | None:
    """The scrubbing pattern of erasure's identifiers (storage backends use it)."""
    return _matcher(identifiers)


class Erasure:
    """``leza.forget()``: the parts an erasure uses.

    ``flush`` writes what is queued (the recorder's), ``storage`` is the read
    side's set-up gate, ``audit_key`` signs the redaction entries (usable only
    with a configured ``secret_key``: ``keyring``), ``revoke_all`` ends the
    person's active sessions (``leza.sessions.revoke_all``).
    """

    def __init__(
        self,
        *,
        flush: Callable[[float], bool],
        storage: ReadyStorage,
        keyring: Keyring,
        audit_key: bytes,
        revoke_all: Callable[[str], int],
    ) -> None:
        self._flush = flush
        self._storage = storage
        self._keyring = keyring
        self._audit_key = audit_key
        self._revoke_all = revoke_all

    def forget(
        self, performer_id: str, *, identifiers: Iterable[str] = (), timeout: float = 10.0
    ) -> ForgetReport:
        """Erase what is recorded about one person (see :meth:`Leza.forget`)."""
        pid = str(performer_id).strip()
        if not pid:
            raise ValueError("forget() needs a performer id")
        require(self._storage.storage, Capability.ERASURE)  # before anything is flushed or revoked
        self._flush(timeout)  # their queued events are stored first, then erased
        storage = self._storage.ready()
        idents = identifiers_of(pid, storage.performer_identities(pid), identifiers)
        redacted: list[AuditEvent] = []
        entries: list[dict[str, Any]] = []
        unverified = 0
        # Planned before anything changes: a refusal leaves everything as it was.
        # Without an audit chain there is nothing to redact: audit rows it may
        # keep are not read back whole, so they stay as they are.
        if storage.supports(Capability.AUDIT_CHAIN):
            redacted, entries, unverified = plan_redactions(
                storage.iter_audit(), storage.audit_redactions(), pid, idents,
                self._audit_key, time.time_ns() // 1000,
            )  # fmt: skip
            if redacted and self._keyring.ephemeral:
                raise LezaError(
                    "erasing a person from the audit log needs the secret key the app writes "
                    "with (secret_key / LEZA_SECRET_KEY): the redaction entries are signed with it"
                )
        revoked = self._revoke_all(pid)
        counts = storage.forget_performer(pid, sorted(idents))
        done = storage.redact_audit(redacted, entries) if redacted else 0
        return ForgetReport(
            access=counts.get("access", 0),
            logs=counts.get("logs", 0),
            advisories=counts.get("advisories", 0),
            sessions=counts.get("sessions", 0),
            revoked=revoked,
            performers=counts.get("performers", 0),
            scrubbed=counts.get("scrubbed", 0),
            audit_redacted=done - unverified if done else 0,
            audit_unverified=unverified,
        )
