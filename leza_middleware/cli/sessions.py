"""``leza sessions [--active] [--user ID]`` and ``leza revoke SESSION_ID | --user ID``."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from .common import CliError, Context
from .formats import jsonl_line, text_line

__all__ = ["add_revoke_arguments", "add_sessions_arguments", "revoke", "sessions"]

SESSIONS_HELP = "list user sessions, newest first"
REVOKE_HELP = "end a session now (its next request gets 401), or every session of a user"


def add_sessions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--active", action="store_true", help="only sessions not ended")
    parser.add_argument("--user", metavar="ID", help="only this performer id")
    parser.add_argument("-n", "--limit", type=int, default=100, metavar="N", help="at most N (100)")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text")


def sessions(ctx: Context, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise CliError("--limit must be 1..10000")
    ctx.storage()
    found = ctx.leza().sessions.find(
        performer_id=args.user, active=True if args.active else None, limit=args.limit
    )
    out = ctx.stdout
    for record in found:
        out.write(jsonl_line(record) if args.format == "jsonl" else text_line("session", record))
    if args.format == "text" and not found:
        ctx.note("no sessions" + (" active" if args.active else "")
                 + (f" of {args.user}" if args.user else ""))  # fmt: skip
    return 0


def add_revoke_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("session_id", nargs="?", metavar="SESSION_ID",
                        help="the session's _id (from leza sessions)")  # fmt: skip
    target.add_argument("--user", metavar="ID", help="every active session of this performer")


def revoke(ctx: Context, args: argparse.Namespace) -> int:
    ctx.storage()
    leza = ctx.leza()
    if args.user is not None:
        n = leza.sessions.revoke_all(args.user)
        _audit(ctx, "revoke_all", "performer", args.user, n)
        print(f"revoked {n} active session{'s' if n != 1 else ''} of {args.user}",
              file=ctx.stdout)  # fmt: skip
        return 0
    sid: str = args.session_id.strip()
    if leza.sessions.revoke(sid):
        _audit(ctx, "revoke", "session", sid, 1)
        print(f"revoked session {sid}", file=ctx.stdout)
        return 0
    record = leza.sessions.get(sid) if sid else None
    if record is None:
        raise CliError(f"no session {sid!r} (the _id column of `leza sessions`)", code=1)
    raise CliError(
        f"session {sid} already ended at {record['ended_at']} ({record['end_reason']})", code=1
    )


def _audit(ctx: Context, action: str, entity_type: str, entity_id: str, count: int) -> None:
    """Revocations are audited — when the app's secret key is known, since a row
    chained under a throwaway key would later fail ``leza verify``."""
    leza = ctx.leza()
    if leza.keyring.ephemeral:
        return
    actor: dict[str, Any] = {"id": f"cli:{_user()}", "name": f"{ctx.prog} ({_user()})"}
    leza.audit.record(
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        actor=actor,
        reason=f"revoked from the command line ({count} session{'s' if count != 1 else ''})",
    )
    leza.flush(10)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return "unknown"
