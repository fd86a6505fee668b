"""The tamper-evident chain of audit rows.

Every process writes its own chain (a random ``chain`` id, re-drawn after
``fork``), numbering its rows 1, 2, 3… on the recorder thread, the only writer
of that chain. Each row stores the previous row's hash and its own:

    hash = HMAC-SHA256(key, "leza-audit-v1" ‖ canonical JSON of the row's content)

where the content includes ``prev_hash``, ``chain`` and ``seq``. Editing a
row changes its hash; deleting or reordering rows breaks the ``seq`` sequence
and the ``prev_hash`` links; cutting the tail is found against a checkpoint —
the latest (seq, hash) of each chain, stored with every batch and exportable
(see ``verify.py``). Without the key nobody can forge a consistent chain.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from ..events import AuditEvent

__all__ = ["Chain", "canonical", "row_hash"]

_DOMAIN = b"leza-audit-v1\0"


def canonical(content: dict[str, Any]) -> bytes:
    """The one byte string a row's content hashes to (sorted keys, no spaces)."""
    return json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode("utf-8")


def row_hash(key: bytes, event: AuditEvent) -> str:
    return hmac.new(key, _DOMAIN + canonical(event.content()), hashlib.sha256).hexdigest()


class Chain:
    """This process's chain: the next ``seq`` and the last hash."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.id = os.urandom(8).hex()
        self.seq = 0
        self.last_hash = ""

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._reset()  # a child must not continue its parent's chain

    def link(self, events: Sequence[AuditEvent]) -> None:
        """Number and hash ``events`` in order, continuing this process's chain."""
        with self._lock:
            for e in events:
                if e.hash:  # already linked (a replayed spill)
                    continue
                self.seq += 1
                e.chain = self.id
                e.seq = self.seq
                e.prev_hash = self.last_hash
                e.hash = row_hash(self.key, e)
                self.last_hash = e.hash
