"""One monitor per deployment, not per worker: who probes is decided by a lock.

* SQLite (one machine): an exclusive ``flock`` on ``<database>.monitor-<tag>.lock``
  (the tag derives from the app name, so apps sharing a database elect apart).
  The kernel drops it when the holding process exits or dies, so another
  worker takes over at its next attempt.
* PostgreSQL (any number of hosts): a session-level advisory lock
  (``pg_try_advisory_lock``) on a connection the leader keeps open; the
  server drops it when that connection ends. The leader checks the
  connection every round and steps down when it is gone.
* JSON Lines: a ``flock`` next to the directory's files, like SQLite.
* Memory storage, or a custom storage without a ``monitor_leadership(name)``
  method: every process is its own leader (one process, or tests). For a
  storage several processes may share (a custom one, MySQL), the monitor says
  so once when it starts: each process would send its own alarms.

Every non-leader process retries every few seconds, so leadership moves
within one retry after the leader stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "FileLeadership",
    "Leadership",
    "PostgresLeadership",
    "ProcessLeadership",
    "leadership_for",
]

log = logging.getLogger("leza_middleware.availability")


class Leadership(Protocol):
    def acquire(self) -> bool:
        """Try to become (or stay) the leader, without blocking; True while leader."""

    def release(self) -> None:
        """Step down."""

    def after_fork(self) -> None:
        """In a forked child: forget a lock the parent holds, without releasing it."""


class ProcessLeadership:
    """Always the leader: one monitor per process.

    ``shared`` names a storage other processes may share (a custom backend,
    MySQL): then every process of a deployment probes and alarms on its own,
    which the monitor logs once.
    """

    def __init__(self, shared: str | None = None) -> None:
        self.shared = shared

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


class FileLeadership:
    """An exclusive, non-blocking ``flock`` on a file, held while leader."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("leza: cannot open the monitor lock %s: %s", self.path, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the lock
            self._fd = None

    def after_fork(self) -> None:
        # The child's copy shares the parent's lock: closing it leaves the
        # parent's lock in place (flock is released when *all* copies close).
        self.release()


def _tag(name: str) -> str:
    """A file-name-safe tag of ``name``: apps sharing a database elect apart."""
    return hashlib.blake2b(name.encode(), digest_size=4).hexdigest()


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    digest = hashlib.blake2b(f"leza-monitor:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresLeadership:
    """A PostgreSQL advisory lock held on a dedicated connection."""

    def __init__(self, engine: Any, name: str) -> None:
        self._engine = engine
        self._key = _lock_key(name)
        self._conn: Any = None
        self._orphans: list[Any] = []

    def acquire(self) -> bool:
        if self._conn is not None:
            try:  # still leader only while the lock's connection lives
                self._conn.execute("SELECT 1")
                return True
            except Exception:
                log.warning("leza: lost the monitor's PostgreSQL connection; stepping down")
                self._drop()
        try:
            conn = self._engine.raw_connection()
        except Exception as exc:
            log.debug("leza: monitor leadership: no connection: %s", exc)
            return False
        try:
            driver = conn.driver_connection
            driver.autocommit = True
            got = driver.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()[0]
        except Exception:
            conn.invalidate()
            return False
        if not got:
            conn.close()
            return False
        self._conn = driver
        self._pooled = conn
        return True

    def _drop(self) -> None:
        pooled = getattr(self, "_pooled", None)
        self._conn = None
        if pooled is not None:
            with contextlib.suppress(Exception):
                pooled.invalidate()  # closes it: the server releases the lock
            self._pooled = None

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
            self._drop()

    def after_fork(self) -> None:
        # The connection belongs to the parent: closing it here would end the
        # parent's session (and its lock). Keep the objects alive, unused.
        if self._conn is not None:
            self._orphans.append((self._conn, getattr(self, "_pooled", None)))
            self._conn = None
            self._pooled = None


def leadership_for(storage: Any, name: str) -> Leadership:
    """The leadership that fits ``storage`` (see the module docstring)."""
    from ..storage.routed import RoutedStorage

    if isinstance(storage, RoutedStorage):
        storage = storage.backend("check")  # storage by kind: the checks' store
    custom = getattr(storage, "monitor_leadership", None)
    if callable(custom):
        found: Leadership = custom(name)
        return found
    from ..storage.memory import MemoryStorage

    describe = getattr(storage, "describe", None)
    label = str(describe()) if callable(describe) else type(storage).__name__
    if os.name != "posix":
        return ProcessLeadership(None if isinstance(storage, MemoryStorage) else label)
    url: Any = getattr(storage, "url", None)
    backend = url.get_backend_name() if hasattr(url, "get_backend_name") else None
    if backend == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file::memory:"):
            return FileLeadership(f"{database}.monitor-{_tag(name)}.lock")
        return ProcessLeadership()
    if backend == "postgresql":
        return PostgresLeadership(storage.engine, name)
    directory = getattr(storage, "directory", None)
    if directory is not None:
        return FileLeadership(Path(directory) / f".leza-monitor-{_tag(name)}.lock")
    if isinstance(storage, MemoryStorage):
        return ProcessLeadership()  # nothing to share: one process
    return ProcessLeadership(label)
