"""The one base class of the ``manage.py leza_*`` commands.

Each command is the ``leza`` command of the same name (``leza_middleware/cli``):
the same arguments and the same code, run against the project's Leza
(``settings.LEZA`` through :func:`~leza_middleware.django.get_leza`) instead
of a ``--storage`` URL.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError

from ...cli import COMMANDS
from ...cli.common import CliError, Context
from ...errors import LezaError
from ..conf import get_leza, leza_options, raw_setting

__all__ = ["LezaCommand"]


class LezaCommand(BaseCommand):  # type: ignore[misc]  # Django is untyped
    #: The ``leza`` command this one runs.
    leza_command: ClassVar[str]
    # Leza's own settings are checked by the command itself (a one-line error),
    # and the project's unrelated check errors must not block reading the log.
    requires_system_checks: ClassVar[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = COMMANDS[self.leza_command].help
        self._actions: list[argparse.Action] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        COMMANDS[self.leza_command].add_arguments(parser)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        self._actions = list(parser._actions)
        return parser

    def _typed(self, options: dict[str, Any]) -> dict[str, Any]:
        """``call_command(..., older_than="90d")`` hands values over as given, past
        argparse's ``type=`` and ``choices``: apply them here, as the command line does."""
        out = dict(options)
        for action in self._actions:
            value = out.get(action.dest)
            if not isinstance(value, str):
                continue
            name = "/".join(action.option_strings) or action.dest
            if callable(action.type) and action.type is not str:
                try:
                    value = out[action.dest] = action.type(value)
                except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                    raise CommandError(f"argument {name}: {exc}", returncode=2) from None
            if action.choices is not None and value not in action.choices:
                choices = ", ".join(map(repr, action.choices))
                raise CommandError(
                    f"argument {name}: invalid choice: {value!r} (choose from {choices})",
                    returncode=2,
                )
        return out

    def handle(self, *args: Any, **options: Any) -> None:
        name = self.leza_command
        options = self._typed(options)
        try:
            ctx = Context(
                prog=f"manage.py leza_{name}",
                make_leza=get_leza,
                options=leza_options(raw_setting()),
                owns_leza=False,  # the project's: it keeps recording after this command
                # The streams under Django's OutputWrapper, which would add a
                # newline to every write (the csv module writes whole lines itself).
                stdout=getattr(self.stdout, "_out", sys.stdout),
                stderr=getattr(self.stderr, "_out", sys.stderr),
            )
            code = COMMANDS[name].run(ctx, argparse.Namespace(**options))
        except CliError as exc:
            raise CommandError(str(exc), returncode=exc.code) from None
        except LezaError as exc:
            raise CommandError(str(exc), returncode=2) from None
        except KeyboardInterrupt:  # Ctrl-C in an export or a purge: no traceback
            self.stderr.write(f"manage.py leza_{name}: interrupted")
            raise SystemExit(130) from None
        if code:
            # The command has said why (BROKEN chain, a failed check, no answer).
            raise SystemExit(code)
