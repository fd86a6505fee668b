"""How an audited Django change is written down: field values as the database
stores them (JSON-ready, comparable before and after a save), and the hand-over
to ``leza.audit.record`` when the transaction commits.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from ..audit.api import Audit

__all__ = ["current_audit", "emit", "on_commit", "value_of"]

log = logging.getLogger("leza_middleware")


def value_of(field: Any, value: Any) -> Any:
    """A field's value as stored, JSON-ready, comparable before and after a save."""
    if value is None:
        return None
    if hasattr(value, "resolve_expression"):  # F("n") + 1: the stored value is unknown here
        return str(value)
    if field is not None:
        value = _python(field, value)  # "5" typed into an IntegerField is stored as 5
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(timezone.utc).isoformat()
        return _naive(value)
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        places = getattr(field, "decimal_places", None)
        if isinstance(places, int) and value.is_finite():
            value = value.quantize(Decimal(1).scaleb(-places))
        return str(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, (dict, list)):
        return value
    if field is not None and hasattr(field, "upload_to"):  # a FieldFile: the stored name
        return getattr(value, "name", None) or None
    return str(value)


def _python(field: Any, value: Any) -> Any:
    try:
        return field.to_python(value)
    except Exception:
        return value


def _naive(value: datetime) -> str:
    """A naive datetime as Django stores it with ``USE_TZ``: in UTC."""
    from django.conf import settings

    if getattr(settings, "USE_TZ", False):
        from django.utils import timezone as dj_timezone

        try:
            aware = dj_timezone.make_aware(value, dj_timezone.get_default_timezone())
            return str(aware.astimezone(timezone.utc).isoformat())
        except Exception:
            pass
    return value.isoformat()


# -- recording ------------------------------------------------------------------------


def on_commit(using: Any, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` when the transaction commits (now, outside a transaction)."""
    from django.db import transaction

    transaction.on_commit(functools.partial(fn, *args), using=using, robust=True)


def current_audit() -> Audit | None:
    try:
        from .conf import get_leza

        return get_leza().audit
    except Exception:
        log.error("leza: settings.LEZA is invalid; a model change is NOT audited", exc_info=True)
        return None


def emit(action: str, entity_type: str, entity_id: Any, before: dict[str, Any] | None,
          after: dict[str, Any] | None, change: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Hand one change to ``leza.audit.record`` (never raises)."""
    try:
        audit = current_audit()
        if audit is None:
            return
        audit.record(
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            before=before,
            after=after,
            diff_=change,
        )
    except Exception:
        log.error("leza: recording a model change failed", exc_info=True)
