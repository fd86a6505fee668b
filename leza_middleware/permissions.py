"""Endpoint permissions: which permission an endpoint needs, and the decision.

    Leza(permissions={
        "Live Tracking Page Permission": ["GET /tracking", "GET /tracking/*"],
        "Admin Permission": ["/admin/*"],               # any method
    })

A request to a protected endpoint is decided *before* the app runs:

* the performer holds the permission → the app runs, and the access event's
  reason reads "User has the permission <P> to access this resource of this
  application <app>";
* signed in without it → 403, action ``denied``, "User lacks the permission <P> …";
* not signed in → 401, action ``denied``, "Authentication required for the
  permission <P> …".

Whether a performer holds a permission: ``has_permission(performer, request,
permission)`` when configured, else the performer's own ``permissions`` (the
Django adapter asks ``user.has_perm``). Unprotected endpoints keep the reason
derived from the status. Patterns are ``[METHOD ]/path`` with ``*`` matching
anything; the first rule that matches wins, in the order given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .enrich.cache import bounded_put
from .errors import LezaConfigError
from .performer import Performer

__all__ = ["Decision", "Permissions", "parse_rules"]

Rule = tuple[str | None, re.Pattern[str], str]  # method (None: any), path pattern, permission
HasPermission = Callable[[Performer, Any, str], bool]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    status: int  # 0 when allowed; else the status to answer with (401 / 403)
    action: str  # "access" or "denied"
    reason: str


def parse_rules(rules: Mapping[str, Iterable[str] | str]) -> tuple[Rule, ...]:
    """Compile ``{permission: [patterns]}``; a bad pattern is a configuration error."""
    if not isinstance(rules, Mapping):
        raise LezaConfigError("permissions must map a permission name to endpoint patterns")
    out: list[Rule] = []
    for permission, patterns in rules.items():
        if not isinstance(permission, str) or not permission.strip():
            raise LezaConfigError(f"permission names must be non-empty strings, got {permission!r}")
        if isinstance(patterns, str):
            patterns = [patterns]
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise LezaConfigError(f"permissions[{permission!r}]: {pattern!r} is not a string")
            method, _, path = pattern.strip().rpartition(" ")
            if not path.startswith("/") or (method and not method.isalpha()):
                raise LezaConfigError(
                    f"permissions[{permission!r}]: {pattern!r} must look like "
                    "'/path', '/path/*' or 'GET /path'"
                )
            regex = re.compile("".join(".*" if part == "*" else re.escape(part)
                                       for part in re.split(r"(\*)", path)))  # fmt: skip
            out.append((method.upper() or None, regex, permission.strip()))
    return tuple(out)


class Permissions:
    def __init__(
        self,
        rules: tuple[Rule, ...],
        app_name: str,
        has_permission: HasPermission | None = None,
    ) -> None:
        self.rules = rules
        self.app_name = app_name
        self.has_permission = has_permission
        self._required: dict[tuple[str, str], str | None] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def required(self, method: str, path: str) -> str | None:
        """The permission an endpoint needs, or None (memoised per method and path)."""
        key = (method, path)
        try:
            return self._required[key]
        except KeyError:
            pass
        found = None
        for rule_method, regex, permission in self.rules:
            if (rule_method is None or rule_method == method) and regex.fullmatch(path):
                found = permission
                break
        if found is None and method == "HEAD":
            # Frameworks answer HEAD with the GET view: it needs what GET needs.
            found = self.required("GET", path)
        if len(path) <= 512:
            bounded_put(self._required, key, found, 4096)
        return found

    def decide(self, permission: str, performer: Performer | None, request: Any) -> Decision:
        where = f"to access this resource of this application {self.app_name}"
        if performer is None:
            return Decision(
                False,
                401,
                "denied",
                f"Authentication required for the permission {permission} {where}",
            )
        if self.has_permission is not None:
            granted = bool(self.has_permission(performer, request, permission))
        else:
            granted = permission in performer.permissions
        if granted:
            return Decision(True, 0, "access", f"User has the permission {permission} {where}")
        return Decision(False, 403, "denied", f"User lacks the permission {permission} {where}")
