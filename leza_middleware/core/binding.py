"""A Leza session bound into a framework's signed-cookie session (Flask, Starlette).

A session kept in a signed cookie cannot be invalidated by the server: a copy
still signs its holder in after a logout or a revocation. So the Leza
session's public id is written into the framework's own session
(``session["_leza_sid"]``), signed with the rest, and every request's binding
is checked against the blocklist before the app runs. The framework adapters
(``integrations/flask.py``, ``integrations/starlette.py``) read and write
their session objects; the decisions are here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..sessions.registry import REVOKED_REASON

if TYPE_CHECKING:
    from ..sessions.cookies import Keyring
    from ..sessions.registry import Sessions

__all__ = ["SESSION_BINDING_KEY", "bound_id", "needs_new_binding", "new_session_id", "refuse"]

#: Where the Leza session's public id is kept in the framework's session.
SESSION_BINDING_KEY = "_leza_sid"


def bound_id(value: Any) -> str | None:
    """The session id a framework session's binding holds (``session.get(KEY)``)."""
    return value if isinstance(value, str) else None


def refuse(state: dict[str, Any], bound: str, reason: str) -> bool:
    """Mark the running request refused for its bound session (recorded as
    ``denied`` with ``reason``, under that session).

    Returns True when the browser is to be signed out (the framework session
    emptied): the session was revoked or logged out. An unknown state
    (``revocation_unknown``) keeps it: the session is probably valid.
    """
    revoked = reason is REVOKED_REASON
    state.update(action="denied", reason=reason, session_id=bound, revoked=revoked)
    return revoked


def needs_new_binding(sessions: Sessions, state: dict[str, Any], bound: str | None) -> bool:
    """A signed-in request starts a new session: none bound yet, a sign-in
    (``leza.sessions.login()``), or one that timed out (not revived)."""
    return bound is None or bool(state.get("new_session")) or bound in sessions.timed_out


def new_session_id(keyring: Keyring) -> str:
    """A fresh session's public id: a keyed hash of a fresh random key, like any session's."""
    return keyring.session_id(os.urandom(18))
