"""Purging old audit rows without breaking the tamper-evident chain.

Every chain verifies from its row 1 (``verify.py``), so deleting old rows by
time alone would look exactly like tampering. A purge instead deletes a
*prefix* of each chain (never a hole: rows are chained in write order, and
two rows of one chain can carry slightly out-of-order times) and records a
**purge marker** per chain: the last purged row's ``seq`` and ``hash``,
HMAC-signed with the audit key. The verifier starts such a chain at
``seq + 1`` and expects that row's ``prev_hash`` to be the marker's hash.

Without the key nobody can write a marker the verifier accepts, so cutting
the head of a chain by hand is still reported; with it, the purge itself is
the only way the head goes. A chain that does not verify is never purged:
that would erase the evidence.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from ..events import AuditEvent
from .chain import canonical

__all__ = ["mark_is_valid", "plan_purge", "sign_mark"]

_DOMAIN = b"leza-audit-purge-v1\0"
_SIGNED = ("chain", "seq", "hash", "ts", "purged_at")


def sign_mark(key: bytes, mark: Mapping[str, Any]) -> str:
    body = canonical({name: mark[name] for name in _SIGNED})
    return hmac.new(key, _DOMAIN + body, hashlib.sha256).hexdigest()


def mark_is_valid(key: bytes, mark: Mapping[str, Any]) -> bool:
    try:
        expected = sign_mark(key, mark)
    except (KeyError, TypeError):
        return False
    return hmac.compare_digest(expected, str(mark.get("sig") or ""))


def plan_purge(
    rows: Iterable[AuditEvent],
    marks: Iterable[Mapping[str, Any]],
    before: int,
    key: bytes,
    now: int,
) -> list[dict[str, Any]]:
    """The signed markers of a purge of everything older than ``before`` (µs).

    ``rows`` are ordered by chain, then seq. For each chain: the longest run
    of rows from its current start (after an earlier marker) that are all
    older than ``before``; its last row becomes the chain's new marker. A
    chain that still holds rows at or before its stored marker (a purge
    interrupted after its markers were committed) gets that marker again, so
    this purge deletes them.
    """
    stored = {str(m["chain"]): m for m in marks}
    last: dict[str, AuditEvent] = {}
    leftover: set[str] = set()
    closed: set[str] = set()  # chains that reached a row too new to purge
    for e in rows:
        mark = stored.get(e.chain)
        if mark is not None and e.seq <= int(mark["seq"]):
            leftover.add(e.chain)
            continue
        if e.chain in closed:
            continue
        if e.ts < before:
            last[e.chain] = e
        else:
            closed.add(e.chain)
    out = [dict(stored[chain]) for chain in sorted(leftover - last.keys())]
    for chain, e in sorted(last.items()):
        new: dict[str, Any] = {
            "chain": chain,
            "seq": e.seq,
            "hash": e.hash,
            "ts": e.ts,
            "purged_at": now,
        }
        new["sig"] = sign_mark(key, new)
        out.append(new)
    return out
