"""What every command shares: where its Leza comes from, errors, durations, progress."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

from ..config import DEFAULT_STORAGE
from ..errors import LezaError
from ..query import to_us

if TYPE_CHECKING:
    from ..leza import Leza
    from ..storage.base import Storage

__all__ = [
    "KINDS",
    "CliError",
    "Context",
    "Progress",
    "cli_context",
    "isatty",
    "missing_sqlite_file",
    "parse_duration",
    "parse_time",
    "parse_until",
    "storage_default",
]

#: Event kinds a command may name (a storage without a place for one says so:
#: ``Storage.stores``).
KINDS = ("access", "audit", "session", "log", "advisory", "check")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)


class CliError(LezaError):
    """A command cannot run: one line for stderr, and the exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def storage_default() -> str:
    return os.environ.get("LEZA_STORAGE") or DEFAULT_STORAGE


def bounded_int(what: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``, else an error
    naming ``what`` and the range."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(
                f"invalid {what} {text!r}: a whole number {low}..{high}"
            )
        return n

    return parse


def parse_duration(text: str) -> int:
    """Seconds in ``90d``, ``12h``, ``30m``, ``2w``, ``45s`` (argparse ``type=``)."""
    m = _DURATION.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number and a unit, e.g. 90d, 12h, 30m, 2w"
        )
    seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be more than 0")
    return int(seconds)


def parse_time(text: str) -> int:
    """µs since the epoch from an ISO 8601 date / date-time, or a duration ago (``7d``).

    A bare date is its first microsecond; ``--until`` adds the rest of the day
    itself (:func:`until_us`), so both bounds are inclusive as in ``leza.query``.
    """
    if _DURATION.fullmatch(text):
        return time.time_ns() // 1000 - parse_duration(text) * 1_000_000
    try:
        value = to_us(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use an ISO 8601 date or date-time "
            "(2025-07-06, 2025-07-06T15:49:24Z) or a duration ago (7d, 12h)"
        ) from None
    assert value is not None
    return value


def parse_until(text: str) -> int:
    """``--until`` (argparse ``type=``): as :func:`parse_time`, a bare date includes its day."""
    value = parse_time(text)
    if len(text.strip()) == 10 and not _DURATION.fullmatch(text):
        end = to_us(text, end=True)
        assert end is not None
        return end
    return value


def iso(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Context:
    """How a command reaches its Leza and its streams: ``leza …`` or ``manage.py leza_…``.

    ``make_leza`` is called at most once, when a command first needs it; the
    CLI builds its own (and shuts it down), Django hands over the project's.
    ``options`` are the settings as given (``check`` validates them itself).
    """

    prog: str
    make_leza: Callable[[], Leza]
    options: Mapping[str, Any]
    owns_leza: bool = True
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    _leza: Leza | None = None

    def leza(self) -> Leza:
        if self._leza is None:
            self._leza = self.make_leza()
        return self._leza

    def storage(self, kind: str | None = None, *, must_exist: bool = True) -> Storage:
        """The storage, set up; a SQLite file that does not exist yet is an error
        (a typo in ``--storage`` must not create an empty database), and so is a
        ``kind`` the storage has no place for (SQL has no log/advisory table yet)."""
        leza = self.leza()
        storage = leza.storage
        if must_exist:
            missing = missing_sqlite_file(storage)
            if missing is not None:
                raise CliError(
                    f"no database at {missing} (nothing recorded there yet, or a wrong --storage)"
                )
        if kind is not None and not storage.stores(kind):
            raise CliError(f"{storage.describe()} keeps no {kind} events (no table for that kind)")
        leza.query.ensure_ready()
        return storage

    def close(self) -> None:
        if self._leza is not None and self.owns_leza:
            self._leza.shutdown(5)

    def note(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)


def missing_sqlite_file(storage: Storage) -> str | None:
    from ..storage import is_sql

    if not is_sql(storage) or storage.url.get_backend_name() != "sqlite":
        return None
    db = storage.url.database or ""
    if not db or db == ":memory:" or db.startswith("file:") or "mode" in storage.url.query:
        return None
    path = os.path.abspath(db)
    return None if os.path.exists(path) else path


def cli_context(
    storage: str | None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> Context:
    """The context of ``leza <command> --storage URL``: a Leza of its own, configured
    from ``LEZA_*`` like the app (same secret key), without geo or a machine cookie."""

    def make() -> Leza:
        from ..leza import Leza

        return Leza(storage=storage, geoip_db=False, machine_cookie=False, sessions=False)

    return Context(
        prog="leza",
        make_leza=make,
        options={"storage": storage},
        stdout=sys.stdout if stdout is None else stdout,
        stderr=sys.stderr if stderr is None else stderr,
    )


class Progress:
    """``N rows, R rows/s`` on stderr, redrawn at most every ``every`` seconds.

    Shown only when ``enabled`` (stderr is a terminal, or ``--progress``); on a
    terminal the line is redrawn in place, elsewhere one line per update.
    """

    def __init__(self, stream: TextIO, enabled: bool, what: str, every: float = 0.5) -> None:
        self.stream = stream
        self.enabled = enabled
        self.what = what
        self.every = every
        self.count = 0
        self.started = time.monotonic()
        self._shown = self.started
        self._tty = isatty(stream)

    def add(self, n: int) -> None:
        self.count += n
        if self.enabled:
            now = time.monotonic()
            if now - self._shown >= self.every:
                self._shown = now
                self._write(self._line(now), final=False)

    def done(self) -> None:
        if self.enabled:
            self._write(self._line(time.monotonic()), final=True)

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        return f"{self.what}: {self.count:,} rows, {self.count / elapsed:,.0f} rows/s"

    def _write(self, line: str, *, final: bool) -> None:
        if self._tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
