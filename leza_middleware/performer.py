"""Who performed a request: the identity attached to events and sessions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Organization", "Performer", "coerce_performer", "performer_from_user"]


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str = ""
    type: str = ""
    labels: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": self.type, "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Organization:
        return cls(
            id=_text(data.get("id")),
            name=_text(data.get("name")),
            type=_text(data.get("type")),
            labels=tuple(_text(x) for x in (data.get("labels") or ())),
        )


@dataclass(frozen=True, slots=True)
class Performer:
    """The authenticated principal behind a request.

    Only ``id`` is required; the other fields follow the session record users
    expect (``performer`` in DESIGN.md) and default to empty.
    """

    id: str
    name: str = ""
    email: str = ""
    picture_url: str = ""
    organization_id: str = ""
    organization_name: str = ""
    role_name: str = ""
    clientid: str = ""
    organization_unit_id: str | None = None
    organization_unit_name: str | None = None
    organization_unit_labels: tuple[str, ...] | None = None
    organizations: tuple[Organization, ...] = field(default=())
    # What the performer may do, for endpoint permissions (permissions.py). Not
    # part of the stored record: authorization data, not identity.
    permissions: frozenset[str] = field(default=frozenset(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "picture_url": self.picture_url,
            "organization_id": self.organization_id,
            "organization_name": self.organization_name,
            "role_name": self.role_name,
            "clientid": self.clientid,
            "organization_unit_id": self.organization_unit_id,
            "organization_unit_name": self.organization_unit_name,
            "organization_unit_labels": (
                None
                if self.organization_unit_labels is None
                else list(self.organization_unit_labels)
            ),
            "organizations": [o.to_dict() for o in self.organizations],
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): stable input for hashing and storage."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Performer:
        if data.get("id") in (None, ""):
            raise ValueError("a performer needs a non-empty 'id'")
        labels = data.get("organization_unit_labels")
        orgs = data.get("organizations") or ()
        return cls(
            id=_text(data["id"]),
            name=_text(data.get("name")),
            email=_text(data.get("email")),
            picture_url=_text(data.get("picture_url")),
            organization_id=_text(data.get("organization_id")),
            organization_name=_text(data.get("organization_name")),
            role_name=_text(data.get("role_name")),
            clientid=_text(data.get("clientid")),
            organization_unit_id=_opt_text(data.get("organization_unit_id")),
            organization_unit_name=_opt_text(data.get("organization_unit_name")),
            organization_unit_labels=None if labels is None else tuple(_text(x) for x in labels),
            organizations=tuple(
                o if isinstance(o, Organization) else Organization.from_dict(o) for o in orgs
            ),
            permissions=frozenset(_text(p) for p in (data.get("permissions") or ())),
        )


def coerce_performer(value: object) -> Performer | None:
    """Turn what a ``performer=`` hook returned into a :class:`Performer`.

    Accepts a Performer, a mapping with at least ``id``, or None. Anything else
    raises ``TypeError`` so the caller can count it as a bad hook result.
    """
    if value is None or isinstance(value, Performer):
        return value
    if isinstance(value, Mapping):
        return Performer.from_dict(value)
    raise TypeError(
        f"performer hook returned {type(value).__name__}; expected Performer, dict or None"
    )


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _opt_text(value: object) -> str | None:
    return None if value is None else str(value)


def _read(user: Any, attr: str) -> Any:
    """An attribute (or zero-argument method) of a user object, None when absent.

    User classes are the app's: a property may raise (Starlette's ``BaseUser``
    raises NotImplementedError for ``identity`` unless overridden), and that
    must cost the event its performer detail, not the event.
    """
    try:
        value = getattr(user, attr, None)
        if callable(value):
            value = value()
    except Exception:
        return None
    return None if value == "" else value


def performer_from_user(user: Any) -> Performer | None:
    """A Performer from a framework's user object, or None when anonymous.

    Understands Starlette's ``BaseUser`` (``identity``, ``display_name``),
    Django's ``User`` (``pk``, ``get_username()``, ``get_full_name()``,
    ``email``) and Flask-Login users (``get_id()``), and plain objects with
    ``id`` / ``name`` / ``email`` attributes.
    """
    if user is None or not _read(user, "is_authenticated"):
        return None
    ident = None
    for attr in ("identity", "pk", "id", "get_id"):
        ident = _read(user, attr)
        if ident is not None:
            break
    name = ""
    for attr in ("get_full_name", "display_name", "get_username", "name", "username"):
        value = _read(user, attr)
        if value is not None:
            name = str(value)
            break
    if ident is None:
        ident = name or None
    if ident is None:
        return None
    return Performer(id=str(ident), name=name, email=str(_read(user, "email") or ""))
