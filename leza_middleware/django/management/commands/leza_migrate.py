"""``manage.py leza_migrate``: ``leza migrate`` against ``settings.LEZA`` (docs/migrations.md).

Leza's own tables and revisions (``leza_alembic_version``), apart from
Django's ``manage.py migrate`` and its ``django_migrations``.
"""

from __future__ import annotations

from ..base import LezaCommand


class Command(LezaCommand):
    leza_command = "migrate"
