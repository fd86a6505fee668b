"""JSON Lines storage: a directory with one ``<kind>.jsonl`` file per kind.

Each line is ``json.dumps(event.to_dict())``. Writes append and flush once per
batch (``fsync=True`` also fsyncs). Re-writing an id is skipped within a
process (a bounded set of recently written ids) and queries keep the first
line of an id, so a replayed batch is still read once. Queries stream the file
(O(lines)); purge rewrites it atomically. One process at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import LezaConfigError
from ..events import (
    AccessEvent,
    AuditEvent,
    Event,
    SessionEvent,
    SessionRecord,
    event_from_dict,
)
from .base import (
    Capability,
    Page,
    QueryFilter,
    Storage,
    audit_matches,
    check_endpoint_kind,
    checkpoints_of,
    count_by_query,
    fold_session,
    select_sessions,
)
from .memory import select_page

__all__ = ["JSONLStorage"]

log = logging.getLogger(__name__)

_KIND = re.compile(r"[a-z][a-z0-9_]*")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class JSONLStorage(Storage):
    # No traffic rollups: ids are deduplicated within a process only (a bounded
    # set), so counts kept here could not be exact, and a file has no atomic
    # increment for several writers. STATE shows no traffic for it.
    capabilities = frozenset(Capability) - {Capability.ROLLUPS}

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = False,
        recent_ids_limit: int = 100_000,
    ) -> None:
        path = os.path.abspath(os.fspath(directory))
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise LezaConfigError(f"JSONL storage {path!r} exists and is not a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise LezaConfigError(f"JSONL storage directory {path!r} is not writable")
        else:
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                raise LezaConfigError(
                    f"JSONL storage {path!r}: the parent directory {parent!r} does not exist"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise LezaConfigError(
                    f"JSONL storage {path!r}: cannot create it, {parent!r} is not writable"
                )
        self.directory = path
        self.fsync = fsync
        self._recent_limit = recent_ids_limit
        self._recent: dict[str, set[str]] = {}
        self._tail_ok: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> JSONLStorage:
        """``jsonl:///abs/dir`` or ``jsonl://relative/dir``; ``?fsync=1`` to fsync."""
        parts = urlsplit(url)
        path = parts.netloc + parts.path
        if not path:
            raise LezaConfigError(
                f"storage URL {url!r} names no directory; expected jsonl:///path/to/dir"
            )
        options = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(options) - {"fsync"}
        if unknown:
            raise LezaConfigError(
                f"storage URL {url!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                "only fsync is supported"
            )
        fsync_text = options.get("fsync", ["0"])[-1].lower()
        if fsync_text not in _TRUE | _FALSE:
            raise LezaConfigError(f"storage URL {url!r}: fsync must be 0 or 1")
        return cls(path, fsync=fsync_text in _TRUE)

    def describe(self) -> str:
        return f"JSONLStorage({self.directory})"

    def path(self, kind: str) -> str:
        if not _KIND.fullmatch(kind):
            raise ValueError(f"invalid event kind {kind!r}")
        return os.path.join(self.directory, f"{kind}.jsonl")

    def setup(self) -> None:
        os.makedirs(self.directory, exist_ok=True)

    # -- write

    def write(self, events: Sequence[Event]) -> None:
        if not events:
            return
        with self._lock:
            groups: dict[str, list[Event]] = {}
            for e in events:
                groups.setdefault(e.kind, []).append(e)
            for kind, group in groups.items():
                self._append(kind, group)
            marks = checkpoints_of(events)
            if marks:
                self._save_checkpoints(marks)

    def _append(self, kind: str, group: list[Event]) -> None:
        path = self.path(kind)
        recent = self._recent.setdefault(kind, set())
        new: dict[str, str] = {}
        for e in group:
            if e.id not in recent and e.id not in new:
                new[e.id] = json.dumps(e.to_dict(), ensure_ascii=False)
        if not new:
            return
        text = "\n".join(new.values()) + "\n"
        if kind not in self._tail_ok:
            os.makedirs(self.directory, exist_ok=True)
            if _ends_without_newline(path):  # a line torn by a crash: do not glue onto it
                text = "\n" + text
        self._tail_ok.discard(kind)  # re-checked after a failure part-way
        with open(path, "a", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._tail_ok.add(kind)
        if len(recent) + len(new) > self._recent_limit:
            recent.clear()
        recent.update(new)

    # -- read

    def _read(self, kind: str) -> Iterator[tuple[str, Event | None]]:
        """(line, event) for each line of ``kind``; event is None when unreadable."""
        try:
            f = open(self.path(kind), encoding="utf-8", newline="\n")  # noqa: SIM115
        except FileNotFoundError:
            return
        with f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    yield line, event_from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    yield line, None

    def _unique(self, kind: str) -> Iterator[Event]:
        seen: set[str] = set()
        bad = 0
        for _, e in self._read(kind):
            if e is None:
                bad += 1
            elif e.id not in seen:
                seen.add(e.id)
                yield e
        if bad:
            log.warning("%s: skipped %d unreadable line(s) in %s.jsonl", self, bad, kind)

    def query(self, kind: str, flt: QueryFilter) -> Page:
        self.path(kind)  # validates the kind
        check_endpoint_kind(kind, flt)
        with self._lock:  # no half-appended last line
            if kind == "audit" and (flt.entity_type is not None or flt.entity_id is not None):
                return select_page(
                    (e for e in self._unique(kind) if audit_matches(e, flt)),  # type: ignore[arg-type]
                    flt,
                )
            if kind == "session":
                # The file holds session changes; fold them into records (O(n)).
                records: dict[str, SessionRecord] = {}
                for change in self._unique(kind):
                    if isinstance(change, SessionEvent):
                        fold_session(records, change)
                return select_sessions(records.values(), flt)
            return select_page(self._unique(kind), flt)

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        return count_by_query(self, kind, flt, cap)

    def iter_audit(self) -> Iterator[AuditEvent]:
        with self._lock:
            rows = [e for e in self._unique("audit") if isinstance(e, AuditEvent)]
        return iter(sorted(rows, key=lambda e: (e.chain, e.seq)))

    def audit_checkpoints(self) -> list[dict[str, Any]]:
        try:
            with open(self._checkpoint_path(), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return []
        return [dict(cp) for cp in data.values()]

    def _checkpoint_path(self) -> str:
        return os.path.join(self.directory, "audit_checkpoints.json")

    def _save_checkpoints(self, marks: dict[str, dict[str, Any]]) -> None:
        """Merge and rewrite the checkpoint file atomically (caller holds the lock)."""
        known = {cp["chain"]: cp for cp in self.audit_checkpoints()}
        for chain, cp in marks.items():
            if cp["seq"] > known.get(chain, {"seq": 0})["seq"]:
                known[chain] = cp
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".checkpoints.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(known, f)
        os.replace(tmp, self._checkpoint_path())

    def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
        """Drop events older than ``before`` by rewriting the file (``batch_size`` is
        not used: the rewrite is one atomic replace). Unreadable lines are kept.
        Sessions: every change of the sessions that ended before ``before``."""
        if kind != "session":
            return self._rewrite(kind, lambda e: e.ts < before)
        with self._lock:
            records: dict[str, SessionRecord] = {}
            for change in self._unique(kind):
                if isinstance(change, SessionEvent):
                    fold_session(records, change)
        ended = {
            sid for sid, r in records.items() if r.ended_at is not None and r.ended_at < before
        }
        if not ended:
            return 0
        self._rewrite(kind, lambda e: getattr(e, "session_id", None) in ended)
        return len(ended)

    def _rewrite(self, kind: str, drop: Callable[[Event], bool]) -> int:
        """Rewrite ``kind``'s file without the events ``drop`` selects; how many went."""
        return self._transform(kind, lambda e: None if drop(e) else e)[0]

    def _transform(self, kind: str, fn: Callable[[Event], Event | None]) -> tuple[int, int]:
        """Rewrite ``kind``'s file through ``fn`` (None: drop the event; another
        event: store that instead); (ids dropped, lines replaced)."""
        path = self.path(kind)
        with self._lock:
            kept: list[str] = []
            purged: set[str] = set()
            replaced = 0
            for line, e in self._read(kind):
                new = e if e is None else fn(e)
                if e is not None and new is None:
                    purged.add(e.id)
                elif new is not e and new is not None:
                    kept.append(json.dumps(new.to_dict(), ensure_ascii=False) + "\n")
                    replaced += 1
                else:
                    kept.append(line if line.endswith("\n") else line + "\n")
            if not purged and not replaced:
                return 0, 0
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{kind}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                    f.writelines(kept)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._recent.get(kind, set()).difference_update(purged)
            self._tail_ok.add(kind)
            return len(purged), replaced

    def audit_purge_marks(self) -> list[dict[str, Any]]:
        try:
            with open(self._purge_marks_path(), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return []
        return [dict(m) for m in data.values()]

    def _purge_marks_path(self) -> str:
        return os.path.join(self.directory, "audit_purge.json")

    def purge_audit_chains(
        self, marks: Sequence[dict[str, Any]], batch_size: int = 10_000
    ) -> Iterator[int]:
        with self._lock:  # the marks first (atomically), then the rows
            known = {m["chain"]: m for m in self.audit_purge_marks()}
            for m in marks:
                if m["seq"] > known.get(m["chain"], {"seq": 0})["seq"]:
                    known[m["chain"]] = dict(m)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".audit_purge.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(known, f)
            os.replace(tmp, self._purge_marks_path())
        upto = {m["chain"]: int(m["seq"]) for m in marks}
        yield self._rewrite(
            "audit",
            lambda e: isinstance(e, AuditEvent) and e.seq <= upto.get(e.chain, 0),
        )

    # -- erasure

    def forget_performer(self, performer_id: str, identifiers: Sequence[str]) -> dict[str, int]:
        from ..privacy import compile_identifiers, forget_event

        rx = compile_identifiers(identifiers)
        with self._lock:
            rids = {
                e.request_id
                for e in self._unique("access")
                if isinstance(e, AccessEvent) and e.performer_id == performer_id
            }
        counts = dict.fromkeys(("access", "logs", "advisories", "sessions", "performers",
                                "scrubbed"), 0)  # fmt: skip
        names = {"access": "access", "log": "logs", "advisory": "advisories"}
        kinds = sorted(
            name[: -len(".jsonl")]
            for name in os.listdir(self.directory)
            if name.endswith(".jsonl") and _KIND.fullmatch(name[: -len(".jsonl")])
        ) if os.path.isdir(self.directory) else []  # fmt: skip
        for kind in kinds:
            if kind == "audit":
                continue  # redacted under signed entries: redact_audit()
            dropped, replaced = self._transform(
                kind, lambda e: forget_event(e, performer_id, rx, rids)
            )
            if kind in names:
                counts[names[kind]] += dropped
            counts["sessions" if kind == "session" else "scrubbed"] += replaced
        return counts

    def audit_redactions(self) -> list[dict[str, Any]]:
        try:
            with open(self._redactions_path(), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return []
        return [dict(m) for m in data.values()]

    def _redactions_path(self) -> str:
        return os.path.join(self.directory, "audit_redactions.json")

    def redact_audit(self, events: Sequence[AuditEvent], entries: Sequence[dict[str, Any]]) -> int:
        # The entries first: a row whose rewrite is interrupted still verifies
        # as written, and a rewritten one has its entry already.
        with self._lock:
            known = {m["id"]: m for m in self.audit_redactions()}
            known.update({m["id"]: dict(m) for m in entries})
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".redactions.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(known, f)
            os.replace(tmp, self._redactions_path())
        new = {e.id: e for e in events}
        return self._transform("audit", lambda e: new.get(e.id, e))[1]

    def after_fork(self) -> None:
        self._lock = threading.Lock()


def _ends_without_newline(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False
