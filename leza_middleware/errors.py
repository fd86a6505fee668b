"""Exceptions raised to the user at configuration time (never at request time)."""

from __future__ import annotations

__all__ = ["LezaConfigError", "LezaError"]


class LezaError(Exception):
    """Base class of every error this library raises."""


class LezaConfigError(LezaError, ValueError):
    """Bad configuration: a storage URL, a GeoIP file, a proxy list, a number.

    Raised when ``Leza(...)`` is built, with a message that names the setting
    and the offending value, so a misconfigured app fails at start, not later.
    """
