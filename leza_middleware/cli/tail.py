"""``leza tail [-f] [--kind K] [-n N] [--format text|jsonl]``: the newest events, then new ones."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..storage.base import QueryFilter, Storage
from .common import KINDS, Context, bounded_int
from .formats import jsonl_line, text_line

__all__ = ["add_arguments", "run"]

HELP = "print the newest events; with -f, keep printing new ones"

#: How far behind the newest row a poll looks again. Rows are stamped when the
#: request started and written by each process's recorder about a second
#: later, so a row can land older than one already printed; re-reading this
#: window (and skipping ids already printed) catches it.
LOOKBACK_US = 5_000_000
_PAGE = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    parser.add_argument("--kind", choices=KINDS, default="access", help="event kind (access)")
    parser.add_argument(
        "-n",
        "--lines",
        type=bounded_int("count", 0, 10_000),
        default=10,
        metavar="N",
        help="newest N events first (10)",
    )
    parser.add_argument("--format", choices=("text", "jsonl"), default="text")
    parser.add_argument(
        "--interval", type=_interval, default=1.0, metavar="SECONDS",
        help="how often -f polls storage (1.0)",
    )  # fmt: skip


def _interval(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = 0.0
    if not 0.01 <= x <= 3600:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: seconds, 0.01..3600")
    return x


class _Stop(Exception):
    """SIGTERM while following: end like Ctrl-C does."""


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(ctx: Context, args: argparse.Namespace) -> int:
    kind: str = args.kind
    storage = ctx.storage(kind)
    out = ctx.stdout

    def emit(event: Any) -> None:
        record = event.to_dict()
        out.write(jsonl_line(record) if args.format == "jsonl" else text_line(kind, record))

    newest = storage.query(kind, QueryFilter(limit=max(args.lines, 1))).events
    for event in reversed(newest[: args.lines]):
        emit(event)
    out.flush()
    if not args.follow:
        return 0
    # Ctrl-C or SIGTERM is the normal way to stop following: no traceback, exit 0.
    with _sigterm_stops(), contextlib.suppress(KeyboardInterrupt, _Stop):
        _follow(storage, kind, newest, emit, out, args.interval)
    return 0


def _follow(
    storage: Storage, kind: str, newest: list[Any], emit: Any, out: Any, interval: float
) -> None:
    # seen: ids inside the look-back window, printed (or older than the start).
    high = newest[0].ts if newest else None
    seen: dict[str, int] = {}
    if high is not None:
        for event in _read_since(storage, kind, high - LOOKBACK_US):
            seen[event.id] = event.ts
    while True:
        time.sleep(interval)
        start = None if high is None else high - LOOKBACK_US
        for event in _read_since(storage, kind, start):
            if event.id in seen:
                continue
            seen[event.id] = event.ts
            emit(event)
            if high is None or event.ts > high:
                high = event.ts
        out.flush()
        if high is not None:
            floor = high - LOOKBACK_US
            for ident in [i for i, ts in seen.items() if ts < floor]:
                del seen[ident]


def _read_since(storage: Storage, kind: str, since: int | None) -> Iterator[Any]:
    """Every event at or after ``since`` (µs), oldest first, in keyset pages."""
    after: tuple[int, str] | None = None if since is None else (since, "")
    while True:
        page = storage.read_after(kind, after, _PAGE)
        yield from page
        if len(page) < _PAGE:
            return
        after = (page[-1].ts, page[-1].id)
