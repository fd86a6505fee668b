"""Which configured endpoint a request is: a logout route, a protected endpoint.

``logout_routes`` entries and permission rules name paths as the app sees
them (``/logout``) or as the client asks for them (``/api/logout`` when the app
is mounted under ``/api``). A request is matched on both, so an entry works
whether or not the app is mounted under a prefix, whatever serves it: ASGI's
``root_path``, WSGI's and Django's ``SCRIPT_NAME``.
"""

from __future__ import annotations

from ..permissions import Permissions

__all__ = ["Endpoints", "request_paths"]


def request_paths(path: str, prefix: str) -> tuple[str, ...]:
    """The request's path as the app sees it, then with its mount prefix (if any).

    ``path`` is the path the client asked for; ``prefix`` the part of it the
    app is mounted at (``""`` when not mounted). ``/api`` under the prefix
    ``/api`` is the app's root: ``("/", "/api/")``.
    """
    if not prefix or not path.startswith(prefix):
        return (path or "/",)
    inner = path[len(prefix) :] or "/"
    return inner, prefix + inner


class Endpoints:
    """The logout routes and the endpoint permissions of one configuration."""

    __slots__ = ("any", "logout_routes", "permissions")

    def __init__(self, logout_routes: tuple[str, ...], permissions: Permissions | None) -> None:
        self.logout_routes = frozenset(logout_routes)
        #: None without rules, so a request pays one identity test.
        self.permissions = permissions if permissions is not None and permissions.rules else None
        #: Whether any request can match anything (else nothing is matched at all).
        self.any = bool(self.logout_routes) or self.permissions is not None

    def is_logout(self, method: str, paths: tuple[str, ...]) -> bool:
        """A ``logout_routes`` entry (``/logout`` or ``GET /logout``) names the request."""
        routes = self.logout_routes
        return bool(routes) and any(p in routes or f"{method} {p}" in routes for p in paths)

    def required(self, method: str, paths: tuple[str, ...]) -> str | None:
        """The permission the first protected one of ``paths`` needs, or None.

        ``HEAD`` needs what ``GET`` would unless a rule names ``HEAD``
        (``Permissions.required``): frameworks answer it with the ``GET`` view.
        """
        permissions = self.permissions
        if permissions is None:
            return None
        for path in paths:
            needed = permissions.required(method, path)
            if needed is not None:
                return needed
        return None
