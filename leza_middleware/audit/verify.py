"""Check the audit chains: every row intact, in order, none missing, no tail cut."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..events import AuditEvent
from ..privacy import redaction_is_valid
from .chain import row_hash
from .purge import mark_is_valid

__all__ = ["VerifyResult", "verify_chains"]


@dataclass(frozen=True)
class VerifyResult:
    """Truthy when every chain is intact; else ``reason`` names the first broken link."""

    ok: bool
    reason: str
    chains: int = 0
    rows: int = 0
    chain: str | None = None  # where it broke
    seq: int | None = None
    problem: str | None = None  # "edited", "deleted", "reordered", "truncated"
    details: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


def _broken(problem: str, chain: str, seq: int, why: str, chains: int, rows: int) -> VerifyResult:
    return VerifyResult(False, f"chain {chain} row {seq}: {why}", chains, rows, chain, seq, problem)


def verify_chains(
    rows: Iterable[AuditEvent],
    checkpoints: Iterable[Mapping[str, Any]],
    key: bytes,
    purged: Iterable[Mapping[str, Any]] = (),
    redactions: Iterable[Mapping[str, Any]] = (),
) -> VerifyResult:
    """Verify ``rows`` (ordered by chain, then seq) against ``checkpoints``.

    A checkpoint is ``{"chain", "seq", "hash"}``: the last link its writer
    stored. Checkpoints exported earlier and kept elsewhere can be passed too;
    then a tail cut together with the stored checkpoint is found as well.

    ``purged`` are the signed purge markers (``purge.py``): a chain with one
    starts after the marker's row; rows up to it (left by an interrupted
    purge) are skipped. A marker not signed with ``key`` breaks the chain.

    ``redactions`` are the signed redaction entries of erasure (privacy/forget.py): a
    row whose content no longer matches its hash is accepted when an entry
    signed with ``key`` names it (id, chain, seq), carries its hash (the link,
    unchanged) and the hash of exactly its present content. Editing a redacted
    row, or its entry, is still found; so is an entry not signed with ``key``.
    """
    marks: dict[str, tuple[int, str]] = {}
    for cp in checkpoints:
        chain, seq, digest = str(cp["chain"]), int(cp["seq"]), str(cp["hash"])
        if seq > marks.get(chain, (0, ""))[0]:
            marks[chain] = (seq, digest)
    starts: dict[str, tuple[int, str]] = {}
    for m in purged:
        chain = str(m["chain"])
        if not mark_is_valid(key, m):
            return _broken(
                "deleted",
                chain,
                int(m["seq"]),
                "its purge marker is not signed with this key: the head of the chain was "
                "cut by hand, or the key is wrong",
                0,
                0,
            )
        if int(m["seq"]) > starts.get(chain, (0, ""))[0]:
            starts[chain] = (int(m["seq"]), str(m["hash"]))
    vouched: dict[tuple[str, int], Mapping[str, Any]] = {}
    for r in redactions:
        if not redaction_is_valid(key, r):
            return _broken(
                "edited",
                str(r.get("chain")),
                int(r.get("seq") or 0),
                "its redaction entry is not signed with this key: the row was edited by "
                "hand, or the key is wrong",
                0,
                0,
            )
        vouched[(str(r["chain"]), int(r["seq"]))] = r
    redacted = 0
    # A chain purged whole still ends where its marker says.
    last: dict[str, tuple[int, str]] = dict(starts)
    chains = rows_seen = 0
    current: str | None = None
    expected_seq = 1
    prev = ""
    for e in rows:
        start = starts.get(e.chain)
        if start is not None and e.seq <= start[0]:
            continue  # purged by its marker; an interrupted purge left it behind
        rows_seen += 1
        if e.chain != current:
            if current is not None:
                last[current] = (expected_seq - 1, prev)
            start_seq, prev = start or (0, "")
            current, expected_seq = e.chain, start_seq + 1
            chains += 1
        if e.seq != expected_seq:
            if e.seq > expected_seq:
                return _broken(
                    "deleted",
                    e.chain,
                    expected_seq,
                    f"missing (the chain jumps to row {e.seq}): a row was deleted",
                    chains,
                    rows_seen,
                )
            return _broken(
                "reordered",
                e.chain,
                e.seq,
                f"out of order (expected row {expected_seq})",
                chains,
                rows_seen,
            )
        digest = row_hash(key, e)
        if not hmac.compare_digest(digest, e.hash):
            entry = vouched.get((e.chain, e.seq))
            if (
                entry is not None
                and str(entry["id"]) == e.id
                and hmac.compare_digest(str(entry["hash"]), e.hash)
                and hmac.compare_digest(str(entry["redacted_hash"]), digest)
            ):
                redacted += 1  # redacted by erasure, as its signed entry says
            else:
                return _broken(
                    "edited",
                    e.chain,
                    e.seq,
                    "its content does not match its hash: the row was edited",
                    chains,
                    rows_seen,
                )
        if e.prev_hash != prev:
            return _broken(
                "reordered",
                e.chain,
                e.seq,
                "it does not follow the row before it: rows were moved or replaced",
                chains,
                rows_seen,
            )
        mark = marks.get(e.chain)
        if mark is not None and mark[0] == e.seq and not hmac.compare_digest(mark[1], e.hash):
            return _broken(
                "edited",
                e.chain,
                e.seq,
                "it differs from the checkpoint taken when it was written",
                chains,
                rows_seen,
            )
        prev = e.hash
        expected_seq += 1
    if current is not None:
        last[current] = (expected_seq - 1, prev)
    for chain, (seq, _hash) in marks.items():
        have_seq = last.get(chain, (0, ""))[0]
        if have_seq < seq:
            return _broken(
                "truncated",
                chain,
                have_seq + 1,
                f"missing: the checkpoint says the chain reached row {seq}, "
                f"the log ends at row {have_seq} (the tail was cut)",
                chains,
                rows_seen,
            )
    reason = f"OK: {rows_seen} rows in {chains} chains verified"
    if redacted:
        reason += f" ({redacted} rows redacted by erasure, signed redaction entries)"
    if starts:
        gone = sum(seq for seq, _ in starts.values())
        reason += f" ({gone} older rows of {len(starts)} chains purged, signed purge markers)"
    return VerifyResult(True, reason, chains, rows_seen)
