"""User sessions, machine identity, login/logout (see registry.py and cookies.py)."""

from .cookies import CookieJar, Keyring
from .registry import LOGIN_REASON, LOGOUT_REASON, REVOKED_REASON, UNKNOWN_REASON, Sessions

__all__ = [
    "LOGIN_REASON",
    "LOGOUT_REASON",
    "REVOKED_REASON",
    "UNKNOWN_REASON",
    "CookieJar",
    "Keyring",
    "Sessions",
]
