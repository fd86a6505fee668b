"""``leza verify [--checkpoints FILE] [--export-checkpoints FILE]``: check the audit chains."""

from __future__ import annotations

import argparse
import json

from ..storage.capabilities import Capability, require
from .common import CliError, Context

__all__ = ["add_arguments", "run"]

HELP = "check the audit log's tamper-evident chains (needs the app's secret key)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints",
        metavar="FILE",
        help="JSON file of checkpoints exported earlier (leza.audit.checkpoints())",
    )
    parser.add_argument(
        "--export-checkpoints",
        metavar="FILE",
        help="write the current checkpoints to FILE (keep it elsewhere)",
    )


def run(ctx: Context, args: argparse.Namespace) -> int:
    leza = ctx.leza()
    require(leza.storage, Capability.AUDIT_CHAIN)  # one sentence, before anything else
    if leza.keyring.ephemeral:
        raise CliError(
            "set LEZA_SECRET_KEY to the key the app writes with (the chain is keyed with it)"
        )
    marks = []
    if args.checkpoints:
        try:
            with open(args.checkpoints, encoding="utf-8") as f:
                marks = json.load(f)
        except (OSError, ValueError) as exc:
            raise CliError(f"--checkpoints {args.checkpoints}: {exc}") from None
    ctx.storage()
    result = leza.audit.verify(marks)
    if args.export_checkpoints:
        with open(args.export_checkpoints, "w", encoding="utf-8") as f:
            json.dump(leza.audit.checkpoints(), f, indent=2)
    print(result.reason if result.ok else f"BROKEN: {result.reason}", file=ctx.stdout)
    return 0 if result.ok else 1
