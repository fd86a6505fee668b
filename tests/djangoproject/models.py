"""Models of the test project (tests/test_audit_django.py): app label ``djangoproject``."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from leza_middleware.django import audited


class Tag(models.Model):
    """Not audited; its side of ``Document.tags`` is (``tag.documents``)."""

    name = models.CharField(max_length=50)


@audited(exclude=["updated_at"])
class Document(models.Model):
    """Audited by the decorator, with the kinds of values a record has to store."""

    title = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="documents",
    )
    price = models.DecimalField(max_digits=8, decimal_places=2, default=0)
    published_at = models.DateTimeField(null=True, blank=True)
    api_token = models.CharField(max_length=64, blank=True)  # masked: never stored
    body = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)  # excluded: changes on every save
    tags = models.ManyToManyField(Tag, related_name="documents", blank=True)
    related = models.ManyToManyField("self", blank=True)  # symmetrical


class Note(models.Model):
    """Not audited, and related to nothing audited: never recorded."""

    text = models.CharField(max_length=100)
