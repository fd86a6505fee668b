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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    storage = args.storage or _storage_default()
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(storage)
    except LezaError as exc:
        print(f"leza: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover
