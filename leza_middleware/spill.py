"""The spill file: where events wait while storage is down.

Each process appends to its own JSON Lines file, holding an exclusive
``flock`` on it while it is open. A file nobody holds a lock on belongs to a
process that exited (or to this one, after rotation) and is replayed into
storage batch by batch, then deleted. Storage writes are idempotent by event
id, so a replay interrupted half-way is simply replayed again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .events import Event, event_from_dict

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process locking
    fcntl = None  # type: ignore[assignment]

__all__ = ["Spill", "default_spill_dir"]

log = logging.getLogger("leza_middleware")


def default_spill_dir(storage_description: str) -> str:
    """A per-storage folder under the user's cache directory.

    Keyed by the storage so that two apps on one host with different
    databases never replay each other's events.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(storage_description.encode()).hexdigest()[:12]
    return os.path.join(base, "leza-middleware", "spill", digest)


def _try_lock(f: IO[Any]) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class Spill:
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self.corrupt_lines = 0

    # -- writing -------------------------------------------------------------

    def append(self, events: Sequence[Event]) -> None:
        """Append events durably (write + fsync), all or none.

        Raises ``OSError`` on failure, having taken back whatever part of the
        batch did reach the file: the caller counts the whole batch as dropped,
        so none of it may be replayed later (a full disk typically takes the
        first lines of a batch and refuses the rest).
        """
        data = _serialise(events)
        with self._lock:
            f = self._file or self._open()
            fd = f.fileno()
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    n = f.write(view)  # unbuffered: a full disk may take part of it
                    if not n:
                        raise OSError(errno.ENOSPC, "the spill file takes no more data")
                    view = view[n:]
                os.fsync(fd)
            except OSError:
                path = self._path
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                    if start == 0 and path is not None:
                        path.unlink()  # not one empty file per failed batch
                # Start a fresh file next time, should the truncation have failed.
                self._close()
                raise

    def _open(self) -> IO[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"spill-{time.time_ns()}-{os.getpid()}-{os.urandom(3).hex()}.jsonl"
        path = self.directory / name
        if fcntl is None:  # pragma: no cover - Windows: no lock to take first
            f = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open across calls
        else:
            # Created under a name replay ignores, locked, then renamed: another
            # process's replay must never find the file unlocked, take it for
            # an orphan and delete it just before this process writes into it.
            new = self.directory / f".{name}.new"
            f = open(new, "ab", buffering=0)  # noqa: SIM115 - kept open across calls
            try:
                _try_lock(f)
                os.replace(new, path)
            except OSError:
                f.close()
                with contextlib.suppress(OSError):
                    new.unlink()
                raise
        self._file, self._path = f, path
        return f

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # also releases the flock
        self._file = self._path = None

    def rotate(self) -> None:
        """Close the current file so it can be replayed."""
        with self._lock:
            self._close()

    def after_fork(self) -> None:
        # The child shares the parent's open file description (and its lock):
        # forget it without closing, and write to a file of its own.
        self._lock = threading.Lock()
        self._file = self._path = None

    # -- replay --------------------------------------------------------------

    def has_files(self) -> bool:
        try:
            return any(self.directory.glob("spill-*.jsonl"))
        except OSError:
            return False

    def replay(self, write: Callable[[list[Event]], None], batch_size: int) -> int:
        """Write every orphaned spill file through ``write``; return events replayed.

        Stops at the first failed write (re-raised), leaving that file in
        place for the next attempt.
        """
        self.rotate()
        total = 0
        try:
            paths = sorted(self.directory.glob("spill-*.jsonl"))
        except OSError:
            return 0
        for path in paths:
            try:
                f = open(path, "r+", encoding="utf-8")  # noqa: SIM115
            except OSError:
                continue  # vanished (another replayer) or unreadable
            with f:
                if not _try_lock(f):
                    continue  # a live process is still writing it
                if os.fstat(f.fileno()).st_nlink == 0:
                    continue  # another process replayed and deleted it meanwhile
                for batch in self._batches(f, batch_size):
                    write(batch)
                    total += len(batch)
                with contextlib.suppress(OSError):
                    path.unlink()
        return total

    def _batches(self, f: IO[str], batch_size: int) -> Iterator[list[Event]]:
        batch: list[Event] = []
        for line in f:
            if not line.endswith("\n"):
                self.corrupt_lines += 1  # torn last line of a crashed writer
                continue
            try:
                batch.append(event_from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                self.corrupt_lines += 1
                continue
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _serialise(events: Sequence[Event]) -> bytes:
    """JSON Lines, UTF-8. A lone surrogate (an undecodable byte some app code let
    through) cannot be encoded as UTF-8; JSON's ``\\u`` escapes keep it, and every
    other character, exactly: the batch is spilled whole either way."""
    dicts = [e.to_dict() for e in events]
    try:
        return "".join(
            json.dumps(d, separators=(",", ":"), ensure_ascii=False) + "\n" for d in dicts
        ).encode("utf-8")
    except UnicodeEncodeError:
        return "".join(json.dumps(d, separators=(",", ":")) + "\n" for d in dicts).encode()
