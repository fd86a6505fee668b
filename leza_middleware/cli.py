"""Command line: ``leza <command>`` or ``python -m leza_middleware <command>``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .__about__ import __version__
from .config import DEFAULT_STORAGE
from .errors import LezaError

__all__ = ["main"]


def _storage_default() -> str:
    return os.environ.get("LEZA_STORAGE") or DEFAULT_STORAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leza", description="Audit and traceability for Python web apps."
    )
    parser.add_argument("--version", action="version", version=f"leza-middleware {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="storage URL (default: $LEZA_STORAGE, else sqlite:///leza.db)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "demo",
        parents=[common],
        help="run an example FastAPI app with the middleware and show what it records",
    )
    verify = sub.add_parser(
        "verify",
        parents=[common],
        help="check the audit log's tamper-evident chains (needs the app's secret key)",
    )
    verify.add_argument(
        "--checkpoints",
        metavar="FILE",
        help="JSON file of checkpoints exported earlier (leza.audit.checkpoints())",
    )
    verify.add_argument(
        "--export-checkpoints",
        metavar="FILE",
        help="write the current checkpoints to FILE (keep it elsewhere)",
    )
    return parser


def _verify(storage: str, checkpoints: str | None, export: str | None) -> int:
    import json

    from .leza import Leza

    if not os.environ.get("LEZA_SECRET_KEY"):
        print(
            "leza verify: set LEZA_SECRET_KEY to the key the app writes with "
            "(the chain is keyed with it)",
            file=sys.stderr,
        )
        return 2
    leza = Leza(storage=storage, geoip_db=False, machine_cookie=False, sessions=False)
    try:
        marks = []
        if checkpoints:
            with open(checkpoints, encoding="utf-8") as f:
                marks = json.load(f)
        result = leza.audit.verify(marks)
        if export:
            with open(export, "w", encoding="utf-8") as f:
                json.dump(leza.audit.checkpoints(), f, indent=2)
        print(result.reason if result.ok else f"BROKEN: {result.reason}")
        return 0 if result.ok else 1
    finally:
        leza.shutdown(2)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    storage = args.storage or _storage_default()
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(storage)
        if args.command == "verify":
            return _verify(storage, args.checkpoints, args.export_checkpoints)
    except LezaError as exc:
        print(f"leza: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover
