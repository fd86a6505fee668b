"""``leza purge --kind K --older-than 90d [--yes]``: batched deletes of old events.

Audit rows go chain by chain behind signed purge markers, so ``leza verify``
still passes afterwards (``audit/purge.py``); that needs the secret key.
Sessions go once they ended before the cutoff; active sessions stay.
``--kind traffic`` purges the rollups STATE reads (hour by hour); purging
access events leaves them as they are.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

from ..storage.capabilities import Capability, require
from ..storage.routed import backend_of
from .common import (
    KINDS,
    CliError,
    Context,
    Progress,
    bounded_int,
    isatty,
    iso,
    parse_duration,
)

__all__ = ["add_arguments", "run"]

HELP = "delete events older than a duration, in batches (asks first without --yes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind", choices=(*KINDS, "traffic"), required=True,
        help="event kind, or traffic: the rollups STATE reads (purging access events keeps them)",
    )  # fmt: skip
    parser.add_argument(
        "--older-than", type=parse_duration, required=True, metavar="DURATION",
        help="age of the events to delete: 90d, 12h, 30m, 2w",
    )  # fmt: skip
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--batch-size", type=bounded_int("batch size", 1, 1_000_000), default=10_000, metavar="N",
        help="rows per delete transaction (10000)",
    )  # fmt: skip
    parser.add_argument(
        "--progress", action="store_true",
        help="show progress on stderr (default: only when stderr is a terminal)",
    )  # fmt: skip


def _describe(kind: str) -> str:
    if kind == "traffic":
        return "traffic rollup rows of hours that ended"
    return "sessions that ended" if kind == "session" else f"{kind} events"


def run(ctx: Context, args: argparse.Namespace) -> int:
    kind: str = args.kind
    before = time.time_ns() // 1000 - args.older_than * 1_000_000
    storage = ctx.storage(None if kind == "traffic" else kind)
    # What it cannot do is said in one sentence before the confirmation
    # (storage by kind: of the store that keeps this kind).
    storage = backend_of(storage, kind)
    if kind == "traffic":
        require(storage, Capability.ROLLUPS)
    if kind == "audit":
        require(storage, Capability.AUDIT_CHAIN, "cannot purge audit rows")
        require(storage, Capability.AUDIT_PURGE)
    else:
        require(storage, Capability.PURGE)
    what = f"{_describe(kind)} before {iso(before)} UTC from {storage.describe()}"
    if not args.yes and not confirm(ctx, f"Delete {what}?"):
        ctx.note("leza purge: nothing deleted")
        return 1
    batches: Iterator[int]
    if kind == "audit":
        batches = ctx.leza().audit.purge_batches(before, args.batch_size)
    else:
        batches = storage.purge_batches(kind, before, args.batch_size)
    progress = Progress(ctx.stderr, args.progress or isatty(ctx.stderr), f"purge {kind}")
    try:
        for n in batches:
            progress.add(n)
    except KeyboardInterrupt:
        progress.done()
        ctx.note(f"leza purge: interrupted; {progress.count:,} rows deleted (committed)")
        return 130
    except (ValueError, NotImplementedError) as exc:
        raise CliError(str(exc)) from None
    progress.done()
    print(f"deleted {progress.count:,} {_describe(kind)} before {iso(before)} UTC",
          file=ctx.stdout)  # fmt: skip
    return 0


def confirm(ctx: Context, question: str) -> bool:
    """y/N on a terminal; refuse (exit 2) when nobody can answer."""
    if not isatty(ctx.stdin):
        raise CliError(
            "refusing to delete without --yes: stdin is not a terminal, nobody can confirm"
        )
    ctx.stderr.write(f"{question} [y/N] ")
    ctx.stderr.flush()
    answer = ctx.stdin.readline()
    return answer.strip().lower() in ("y", "yes")
