"""``leza export --kind K [--since] [--until] --format jsonl|csv [-o FILE]``.

Streams newest first, in keyset pages of ``--page-size`` rows: memory stays
the same for a thousand rows or a hundred million (``bench/export.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TextIO

from ..storage.base import QueryFilter, Storage
from .common import KINDS, CliError, Context, Progress, isatty, parse_time, parse_until
from .formats import columns_for, csv_row, flatten, jsonl_line

__all__ = ["add_arguments", "iter_pages", "iter_records", "run"]

HELP = "write events to JSON Lines or CSV, streaming (constant memory)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS, required=True, help="event kind")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="(jsonl)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    parser.add_argument(
        "--since", type=parse_time, metavar="TIME",
        help="from this ISO 8601 date/date-time, or a duration ago (7d), inclusive",
    )  # fmt: skip
    parser.add_argument(
        "--until", type=parse_until, metavar="TIME", help="up to this time, inclusive"
    )
    parser.add_argument("--action", help="only this action (e.g. login)")
    parser.add_argument("--user", metavar="ID", help="only this performer id")
    parser.add_argument(
        "--progress", action="store_true",
        help="show progress on stderr (default: only when stderr is a terminal)",
    )  # fmt: skip
    parser.add_argument(
        "--spreadsheet-safe", action="store_true",
        help="CSV: prefix cells starting with = + - @ with ' so spreadsheets do not run them",
    )  # fmt: skip
    parser.add_argument("--page-size", type=int, default=2000, help=argparse.SUPPRESS)


def iter_pages(storage: Storage, kind: str, flt: QueryFilter) -> Iterator[list[dict[str, Any]]]:
    """Every matching record, newest first, one keyset page in memory at a time."""
    while True:
        page = storage.query(kind, flt)
        yield [event.to_dict() for event in page.events]
        if page.next_cursor is None:
            return
        flt = replace(flt, cursor=page.next_cursor)


def iter_records(storage: Storage, kind: str, flt: QueryFilter) -> Iterator[dict[str, Any]]:
    """:func:`iter_pages`, record by record."""
    for page in iter_pages(storage, kind, flt):
        yield from page


def run(ctx: Context, args: argparse.Namespace) -> int:
    if not 1 <= args.page_size <= 10_000:
        raise CliError("--page-size must be 1..10000")
    storage = ctx.storage(args.kind)
    flt = QueryFilter(
        since=args.since, until=args.until, action=args.action, performer_id=args.user,
        limit=args.page_size,
    )  # fmt: skip
    progress = Progress(ctx.stderr, args.progress or isatty(ctx.stderr), f"export {args.kind}")
    pages = iter_pages(storage, args.kind, flt)
    if args.output is None:
        _write(ctx.stdout, args, pages, progress)
        ctx.stdout.flush()
    else:
        _write_file(args.output, args, pages, progress)
    progress.done()
    if args.output is not None:
        ctx.note(f"{progress.count:,} {args.kind} events written to {args.output}")
    return 0


def _write_file(path: str, args: argparse.Namespace, pages: Any, progress: Progress) -> None:
    """Into a temporary file renamed at the end: an interrupted export leaves no
    half file under the final name."""
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise CliError(f"-o {path}: the directory {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".leza-export.", suffix=".tmp")
    try:
        # newline="" lets the csv module write its own \r\n; JSON Lines gets \n.
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            _write(f, args, pages, progress)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write(
    out: TextIO, args: argparse.Namespace, pages: Iterator[list[dict[str, Any]]], progress: Progress
) -> None:
    """One write per page: a write per row costs as much as encoding it."""
    if args.format == "jsonl":
        for page in pages:
            out.write("".join(map(jsonl_line, page)))
            progress.add(len(page))
        return
    buffer = io.StringIO()
    # csv writes into a buffer that goes out once per page (and keeps \r\n).
    writer = csv.writer(buffer)
    columns = columns_for(args.kind)
    header = False
    safe = args.spreadsheet_safe
    for page in pages:
        if not header and (columns or page):
            columns = columns or columns_for(args.kind, page[0])  # kinds without a fixed header
            writer.writerow(columns)
            header = True
        writer.writerows(csv_row(columns, flatten(record), safe) for record in page)
        out.write(buffer.getvalue())
        buffer.seek(0)
        buffer.truncate()
        progress.add(len(page))
