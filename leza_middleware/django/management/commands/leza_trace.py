"""``manage.py leza_trace``: ``leza trace`` against ``settings.LEZA`` (docs/cli.md)."""

from __future__ import annotations

from ..base import LezaCommand


class Command(LezaCommand):
    leza_command = "trace"
