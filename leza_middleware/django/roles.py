"""``role_name`` from the user's Django groups, cached per user.

Groups live in the database; reading them on every request would add a query
per request. Each user's comma-joined group names are cached for ``ROLE_TTL``
seconds, and the cache is dropped when this process changes a user's groups
or a group (``m2m_changed`` / ``post_save`` / ``post_delete``); other processes
see a change within ``ROLE_TTL``.
"""

from __future__ import annotations

import contextlib
import threading
from time import monotonic
from typing import Any

__all__ = ["ROLE_TTL", "arole_names", "forget_roles", "role_names"]

ROLE_TTL = 60.0
ROLE_CACHE_SIZE = 10_000
_roles: dict[Any, tuple[float, str]] = {}
_watching = False
_watch_lock = threading.Lock()


def _cached_roles(user: Any) -> tuple[Any, str | None]:
    key = user.pk  # one AUTH_USER_MODEL per project
    hit = _roles.get(key)
    if hit is not None and hit[0] > monotonic():
        return key, hit[1]
    return key, None


def _remember_roles(key: Any, names: list[str]) -> str:
    roles = ",".join(sorted(names))
    if len(_roles) >= ROLE_CACHE_SIZE:
        with contextlib.suppress(KeyError, StopIteration, RuntimeError):
            del _roles[next(iter(_roles))]  # oldest first
    _roles[key] = (monotonic() + ROLE_TTL, roles)
    return roles


def _groups(user: Any) -> Any:
    """The user's ``groups`` manager, or None for user models without groups."""
    if not _watching:
        _watch_groups()
    groups = getattr(user, "groups", None)
    return groups if hasattr(groups, "values_list") else None


def role_names(user: Any) -> str:
    """The user's group names, comma-joined in name order (cached)."""
    key, roles = _cached_roles(user)
    if roles is not None:
        return roles
    groups = _groups(user)
    names = [] if groups is None else list(groups.values_list("name", flat=True))
    return _remember_roles(key, names)


async def arole_names(user: Any) -> str:
    """:func:`role_names` in async mode (the ORM only through await)."""
    key, roles = _cached_roles(user)
    if roles is not None:
        return roles
    groups = _groups(user)
    names = [] if groups is None else [n async for n in groups.values_list("name", flat=True)]
    return _remember_roles(key, names)


def forget_roles(**kwargs: Any) -> None:
    """Drop the cached group names (a signal receiver; call it after bulk changes)."""
    _roles.clear()


def _watch_groups() -> None:
    global _watching
    with _watch_lock:
        if _watching:
            return
        _watching = True
        try:
            from django.contrib.auth import get_user_model
            from django.db.models.signals import m2m_changed, post_delete, post_save

            field = get_user_model()._meta.get_field("groups")
        except Exception:  # no auth app, or a user model without groups
            return
        m2m_changed.connect(forget_roles, sender=field.remote_field.through, dispatch_uid="leza")
        post_save.connect(forget_roles, sender=field.related_model, dispatch_uid="leza")
        post_delete.connect(forget_roles, sender=field.related_model, dispatch_uid="leza")
