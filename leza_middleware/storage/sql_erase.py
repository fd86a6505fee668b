"""The SQL backend's erasure (``leza.forget``) and audit redaction.

Erasure deletes a performer's access rows, log records and advisories, their
performer rows, and anonymises their sessions (kept, ended: the ended row is how
a revocation reaches other processes); then scrubs their identifiers from other
rows' free text. Audit redaction rewrites entries under a signed redaction
entry, both in one transaction, so verification never sees one without the other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select, update

from ..events import AuditEvent
from ..performer import Performer
from .models import access_table, audit_redaction_table, audit_table, performer_table, session_table
from .sql_codecs import AUDIT_COLS, KINDS, audit_row
from .sql_purge import delete_chunks

if TYPE_CHECKING:
    from .sql import SQLStorage

__all__ = ["audit_redactions", "forget_performer", "performer_identities", "redact_audit"]


def performer_identities(storage: SQLStorage, performer_id: str) -> list[Performer]:
    storage.ensure_ready()
    t = performer_table
    rows = storage.read(select(t.c.json).where(t.c.performer_id == performer_id))
    return [Performer.from_dict(json.loads(r[0])) for r in rows]


def forget_performer(
    storage: SQLStorage, performer_id: str, identifiers: Sequence[str]
) -> dict[str, int]:
    from ..privacy import compile_identifiers, scrub_json, scrub_text

    storage.ensure_ready()
    a, lg, adv = access_table, KINDS["log"].table, KINDS["advisory"].table
    s, p = session_table, performer_table
    counts: dict[str, int] = {}
    batch = 10_000
    mine = a.c.performer_id == performer_id
    # Their requests' log records first, while their access rows still say
    # which requests were theirs (a record written before the app knew
    # who was signed in carries the request id only).
    rids = select(a.c.request_id).where(mine)
    with storage.transaction() as conn:
        counts["logs"] = conn.execute(delete(lg).where(lg.c.request_id.in_(rids))).rowcount
    for key, t, cond in (
        ("logs", lg, lg.c.performer_id == performer_id),
        ("advisories", adv, adv.c.performer_id == performer_id),
        ("access", a, mine),
    ):
        chunk = select(t.c.id).where(cond).limit(batch)
        stmt = delete(t).where(t.c.id.in_(select(chunk.subquery().c.id)))
        counts[key] = counts.get(key, 0) + sum(delete_chunks(storage, stmt, batch))
    with storage.transaction() as conn:
        # Kept, ended and anonymous: the ended row is how a revocation
        # reaches the other processes (Sessions.poll).
        counts["sessions"] = conn.execute(
            update(s)
            .where(s.c.performer_id == performer_id)
            .values(
                performer_id=None,
                performer_key=None,
                ip="",
                machine_id=None,
                device_key=None,
                geo_key=None,
            )
        ).rowcount
        counts["performers"] = conn.execute(
            delete(p).where(p.c.performer_id == performer_id)
        ).rowcount
    storage.forget_known_keys()  # the deleted performer keys must be written again if seen
    # Other rows' free text: candidates by a case-insensitive LIKE (a full
    # scan; erasure is rare), rewritten in Python.
    rx = compile_identifiers(identifiers)
    scrubbed = 0
    if rx is not None:
        for t, cols, as_json in (
            (a, ("endpoint", "reason"), ()),
            (lg, ("message", "exception"), ()),
            (adv, ("message", "details"), ("details",)),
        ):
            hits = or_(*(t.c[c].icontains(i, autoescape=True) for c in cols for i in identifiers))
            rows = storage.read(select(t.c.id, *(t.c[c] for c in cols)).where(hits))
            updates = []
            for r in rows:
                values = {}
                for c, old in zip(cols, r[1:], strict=True):
                    if old is None:
                        continue
                    new: str | None
                    if c in as_json:
                        value = scrub_json(json.loads(old), rx)
                        new = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
                    else:
                        new = scrub_text(old, rx)
                    if new != old:
                        values[c] = new
                if values:
                    updates.append((r[0], values))
            with storage.transaction() as conn:
                for row_id, values in updates:
                    conn.execute(update(t).where(t.c.id == row_id).values(**values))
            scrubbed += len(updates)
    counts["scrubbed"] = scrubbed
    return counts


def audit_redactions(storage: SQLStorage) -> list[dict[str, Any]]:
    storage.ensure_ready()
    t = audit_redaction_table
    cols = ("id", "chain", "seq", "hash", "redacted_hash", "redacted_at", "sig")
    rows = storage.read(select(*(t.c[n] for n in cols)).order_by(t.c.chain, t.c.seq))
    return [dict(zip(cols, r, strict=True)) for r in rows]


def redact_audit(
    storage: SQLStorage, events: Sequence[AuditEvent], entries: Sequence[dict[str, Any]]
) -> int:
    storage.ensure_ready()
    t, au = audit_redaction_table, audit_table
    cols = ("id", "chain", "seq", "hash", "redacted_hash", "redacted_at", "sig")
    done = 0
    # Entries and rows in one transaction: verify() never sees one without the other.
    with storage.transaction() as conn:
        for m in entries:
            conn.execute(delete(t).where(t.c.id == m["id"]))
            conn.execute(t.insert().values({c: m[c] for c in cols}))
        for e in events:
            row = dict(zip(AUDIT_COLS, audit_row(e), strict=True))
            values = {c: row[c] for c in ("entity_id", "actor_id", "actor", "before",
                                           "after", "diff", "reason", "client_ip")}  # fmt: skip
            done += conn.execute(
                update(au).where(au.c.id == e.id, au.c.hash == e.hash).values(**values)
            ).rowcount
    return done
