"""``manage.py leza_status``: ``leza status`` against ``settings.LEZA`` (docs/cli.md)."""

from __future__ import annotations

from ..base import LezaCommand


class Command(LezaCommand):
    leza_command = "status"
