"""Performer hooks named by dotted path in the tests' settings.LEZA."""

from __future__ import annotations

from typing import Any


def from_header(request: Any) -> dict[str, str] | None:
    name = request.headers.get("X-Demo-User")
    return {"id": f"u-{name}", "name": name, "role_name": "demo"} if name else None


def from_user(request: Any) -> dict[str, str] | None:
    user = request.user
    if not user.is_authenticated:
        return None
    return {"id": f"user-{user.pk}", "name": user.get_username(), "role_name": "hooked"}


def can_view_reports(performer: Any, request: Any, permission: str) -> bool:
    """A ``has_permission`` hook by dotted path: only users named in the header."""
    return bool(request.headers.get("X-Allowed") == performer.name)


def dashboard_by_header(request: Any) -> bool:
    """A ``dashboard_authorize`` hook by dotted path: whoever sends the header."""
    return request.headers.get("X-Dashboard") == "let-me-in"
