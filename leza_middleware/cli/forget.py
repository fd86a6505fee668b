"""``leza forget --performer ID [--identifier TEXT …] [--yes]``: erase one person's data.

Runs :meth:`Leza.forget` (``privacy/forget.py``): their events deleted, their sessions
ended and made anonymous, and their audit rows redacted under signed
redaction entries, so ``leza verify`` still passes. Audit redaction needs the
app's secret key (``LEZA_SECRET_KEY``), as ``leza verify`` does.
"""

from __future__ import annotations

import argparse

from ..storage.capabilities import Capability, require
from .common import CliError, Context
from .purge import confirm

__all__ = ["HELP", "add_arguments", "run"]

HELP = (
    "erase one person's data: delete their events, end their sessions, redact them "
    "in the audit log (the chain still verifies; asks first without --yes)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--performer", required=True, metavar="ID", help="the performer's id")
    parser.add_argument(
        "--identifier", action="append", default=[], metavar="TEXT",
        help="another string that identifies them in free text (a user name, a phone "
        "number); repeat for more. Their email and name are found by themselves",
    )  # fmt: skip
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def run(ctx: Context, args: argparse.Namespace) -> int:
    performer = str(args.performer).strip()
    if not performer:
        raise CliError("--performer must not be empty")
    storage = ctx.storage()
    require(storage, Capability.ERASURE)  # said before the question, not after it
    question = (
        f"Erase everything recorded about performer {performer!r} from {storage.describe()}? "
        "This cannot be undone."
    )
    if not args.yes and not confirm(ctx, question):
        ctx.note("leza forget: nothing erased")
        return 1
    report = ctx.leza().forget(performer, identifiers=args.identifier)
    print(
        f"forgotten: {report.access:,} access events, {report.logs:,} log records and "
        f"{report.advisories:,} advisories deleted; {report.sessions:,} sessions made "
        f"anonymous ({report.revoked:,} revoked); {report.performers:,} identity rows "
        f"deleted; {report.scrubbed:,} other rows scrubbed; {report.audit_redacted:,} "
        "audit rows redacted",
        file=ctx.stdout,
    )
    if report.audit_unverified:
        ctx.note(
            f"leza forget: {report.audit_unverified:,} audit rows did not verify before "
            "erasure (edited by hand?): scrubbed, and still reported by `leza verify`"
        )
        return 1
    return 0
