"""``manage.py rename_group ID NAME``: a model change outside any request."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Rename a group (tests/test_audit_django.py)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("group_id", type=int)
        parser.add_argument("name")

    def handle(self, *args: Any, group_id: int, name: str, **options: Any) -> None:
        group = Group.objects.get(pk=group_id)
        group.name = name
        group.save()
