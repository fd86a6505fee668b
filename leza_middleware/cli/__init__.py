"""Command line: ``leza <command>`` or ``python -m leza_middleware <command>``.

One module per command group; each gives ``add_arguments(parser)`` and
``run(ctx, args) -> exit code``. The Django management commands
(``manage.py leza_tail`` …) call the same pair with the project's Leza.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..__about__ import __version__
from ..errors import LezaError
from . import (
    check,
    dashboard,
    export,
    forget,
    migrate,
    purge,
    sessions,
    status,
    tail,
    trace,
    verify,
)
from .common import CliError, Context, cli_context, storage_default

__all__ = ["COMMANDS", "Command", "build_parser", "execute", "main"]


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context, argparse.Namespace], int]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """``demo`` has only the common ``--storage``."""


def _demo(ctx: Context, args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(ctx.options["storage"] or storage_default())


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "run an example FastAPI app with the middleware and show what it records",
        _no_arguments,
        _demo,
    ),
    "status": Command(status.HELP, status.add_arguments, status.run),
    "tail": Command(tail.HELP, tail.add_arguments, tail.run),
    "export": Command(export.HELP, export.add_arguments, export.run),
    "purge": Command(purge.HELP, purge.add_arguments, purge.run),
    "sessions": Command(sessions.SESSIONS_HELP, sessions.add_sessions_arguments, sessions.sessions),
    "revoke": Command(sessions.REVOKE_HELP, sessions.add_revoke_arguments, sessions.revoke),
    "verify": Command(verify.HELP, verify.add_arguments, verify.run),
    "trace": Command(trace.HELP, trace.add_arguments, trace.run),
    "check": Command(check.HELP, check.add_arguments, check.run),
    "dashboard": Command(dashboard.HELP, dashboard.add_arguments, dashboard.run),
    "forget": Command(forget.HELP, forget.add_arguments, forget.run),
    "migrate": Command(migrate.HELP, migrate.add_arguments, migrate.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leza", description="Audit and traceability for Python web apps."
    )
    parser.add_argument("--version", action="version", version=f"leza-middleware {__version__}")
    storage_help = "storage URL (default: $LEZA_STORAGE, else sqlite:///leza.db)"
    parser.add_argument("--storage", metavar="URL", help=storage_help)
    # After the command too; SUPPRESS keeps a --storage given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage", metavar="URL", default=argparse.SUPPRESS, help=storage_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub_parser = sub.add_parser(
            name, parents=[common], help=command.help, description=command.help
        )
        command.add_arguments(sub_parser)
    return parser


def execute(name: str, ctx: Context, args: argparse.Namespace) -> int:
    """Run one command; errors become one line on stderr and an exit code."""
    try:
        return COMMANDS[name].run(ctx, args)
    except CliError as exc:
        ctx.note(f"{ctx.prog} {name}: {exc}")
        return exc.code
    except LezaError as exc:
        ctx.note(f"{ctx.prog}: {exc}")
        return 2
    except KeyboardInterrupt:
        ctx.note(f"{ctx.prog} {name}: interrupted")
        return 130
    finally:
        ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # No --storage: LEZA_STORAGE and LEZA_STORAGE_<KIND>, as the app reads them.
    ctx = cli_context(args.storage)
    try:
        return execute(args.command, ctx, args)
    except BrokenPipeError:
        # The reader went away (``leza export | head``): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
