"""``leza trace request|session|performer|entity|record …``: the traceability views
in the terminal.

The same reads as the dashboard's views (``leza.trace``): ``--json`` prints
exactly what ``<mount>/api/requests/<id>`` (and its siblings) answer; the
text form lists the same records, one line each (as ``leza tail`` writes
them), under a heading per part. Nothing recorded under the id: exit code 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from ..query import parse_cursor
from ..trace.views import PAGE
from .common import CliError, Context
from .formats import text_line

__all__ = ["HELP", "add_arguments", "run"]

HELP = "show everything recorded about one request, session, performer, entity or record"
_WHAT = ("request", "session", "performer", "entity", "record")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=_WHAT, help="what the id names")
    parser.add_argument(
        "ident",
        metavar="ID",
        help="a request id, a session _id, a performer id, an entity type (then its id) or "
        "a record _id",
    )
    parser.add_argument(
        "entity_id", nargs="?", metavar="ENTITY_ID", help="with entity: the entity's id"
    )
    parser.add_argument("--json", action="store_true", help="print the view as JSON (the API's)")
    parser.add_argument(
        "-n",
        "--limit",
        type=int,
        default=PAGE,
        metavar="N",
        help=f"session requests / entity changes per page (1..1000, default {PAGE})",
    )
    parser.add_argument("--cursor", metavar="C", help="the next_cursor of the previous page")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="with entity: also verify the whole audit chain (reads every audit row)",
    )


def run(ctx: Context, args: argparse.Namespace) -> int:
    what: str = args.what
    if (what == "entity") != (args.entity_id is not None):
        raise CliError(
            "entity takes a type and an id (leza trace entity TYPE ID); the others one id"
        )
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit must be 1..1000")
    if args.cursor is not None:
        try:
            parse_cursor(args.cursor)
        except ValueError:
            raise CliError(f"--cursor {args.cursor[:80]!r} is not a next_cursor") from None
    if args.verify and what != "entity":
        raise CliError("--verify goes with entity")
    ctx.storage()
    leza = ctx.leza()
    trace = leza.trace
    view: dict[str, Any] | None
    if what == "request":
        view = trace.request(args.ident)
    elif what == "session":
        view = trace.session(args.ident, limit=args.limit, cursor=args.cursor)
    elif what == "performer":
        view = trace.performer(args.ident)
    elif what == "record":
        view = trace.record(args.ident)
    else:
        view = trace.entity(args.ident, args.entity_id, limit=args.limit, cursor=args.cursor)
        if view is not None and args.verify:
            if leza.keyring.ephemeral:
                raise CliError("--verify needs LEZA_SECRET_KEY: the key the app writes with")
            result = leza.audit.verify()
            view["chain"] = {"state": "ok" if result else "broken", "text": result.reason}
    if view is None:
        shown = args.ident if what != "entity" else f"{args.ident} #{args.entity_id}"
        raise CliError(f"nothing recorded for {what} {shown!r}", code=1)
    out = ctx.stdout
    if args.json:
        out.write(json.dumps(view, ensure_ascii=False, indent=2, default=str) + "\n")
        return 0
    _TEXT[what](out, view)
    return 0


def _part(out: TextIO, title: str, kind: str, items: Sequence[Mapping[str, Any]]) -> None:
    out.write(f"\n{title} ({len(items)})\n")
    for item in items:
        out.write("  " + text_line(kind, item))


def _request(out: TextIO, view: Mapping[str, Any]) -> None:
    counts = view["counts"]
    out.write(f"request {view['request_id']}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    performer = view.get("performer") or {}
    if performer:
        out.write(f"; performer {performer.get('id')}")
    if view.get("session_id"):
        out.write(f"; session {view['session_id']}")
    out.write("\n")
    for item in view["items"]:
        out.write(f"  {item.get('kind'):<8}  " + text_line(str(item.get("kind")), item))


def _session(out: TextIO, view: Mapping[str, Any]) -> None:
    session = view.get("session")
    if session is None:
        out.write("session: no session record stored (purged, or not written yet)\n")
    else:
        out.write("session  " + text_line("session", session))
    more = "" if view["request_count_exact"] else " (the newest)"
    out.write(f"\nplaces ({len(view['places'])}, from {view['request_count']} requests{more})\n")
    for p in view["places"]:
        where = ", ".join(x for x in (p.get("city"), p.get("country_name")) if x) or "unknown"
        out.write(f"  {p['ip']}  {where}  {p['first_seen']}  {p['last_seen']}  {p['requests']}\n")
    requests = view["requests"]
    _part(out, "requests, newest first", "access", requests["items"])
    if requests.get("next_cursor"):
        out.write(f"  more: --cursor {requests['next_cursor']}\n")
    _part(out, "changes made in this session", "audit", view["changes"])
    _part(out, "advisories", "advisory", view["advisories"])


def _seen(out: TextIO, title: str, items: Sequence[Mapping[str, Any]], label: Any) -> None:
    out.write(f"\n{title} ({len(items)})\n")
    for i in items:
        out.write(f"  {label(i)}  {i['first_seen']}  {i['last_seen']}  {i['requests']}\n")


def _performer(out: TextIO, view: Mapping[str, Any]) -> None:
    p = view["performer"]
    out.write(f"performer {p.get('id')}  {p.get('name') or ''}  {p.get('email') or ''}\n")
    _part(out, "sessions, active first", "session", view["sessions"])
    _seen(out, "devices", view["devices"], lambda d: d.get("user_agent") or "unknown")
    _seen(out, "machine ids", view["machines"], lambda m: m["machine_identifier"])
    _seen(
        out,
        "countries",
        view["countries"],
        lambda c: f"{c.get('country_code') or '--'} {c.get('country_name') or 'unknown'}",
    )
    _part(out, "denied requests and failed logins", "access", view["refused"])
    _part(out, "changes made by them", "audit", view["changes"])
    _part(out, "advisories", "advisory", view["advisories"])


def _entity(out: TextIO, view: Mapping[str, Any]) -> None:
    out.write(f"history of {view['entity_type']} #{view['entity_id']}, oldest first\n")
    chain = view.get("chain")
    if chain:
        out.write(f"chain: {chain['state']} ({chain['text']})\n")
    for item in view["items"]:
        intact = {True: "ok", False: "EDITED", None: "?"}[item.get("intact")]
        out.write(f"  {intact:<6}  " + text_line("audit", item))
    if view.get("next_cursor"):
        out.write(f"  more: --cursor {view['next_cursor']}\n")


def _record(out: TextIO, view: Mapping[str, Any]) -> None:
    out.write(text_line(str(view["kind"]), view["record"]))
    if "evidence" in view:
        out.write(f"\nevidence stored ({len(view['evidence'])})\n")
        for item in view["evidence"]:
            out.write(f"  {item.get('kind'):<8}  " + text_line(str(item.get("kind")), item))


_TEXT = {
    "request": _request,
    "session": _session,
    "performer": _performer,
    "entity": _entity,
    "record": _record,
}
