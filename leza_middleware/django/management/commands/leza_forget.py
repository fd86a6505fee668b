"""``manage.py leza_forget``: ``leza forget`` against ``settings.LEZA`` (docs/privacy.md)."""

from __future__ import annotations

from ..base import LezaCommand


class Command(LezaCommand):
    leza_command = "forget"
