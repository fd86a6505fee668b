"""Exceptions raised to the user at configuration time (never at request time)."""

from __future__ import annotations

__all__ = ["LezaConfigError", "LezaError", "StorageCapabilityError"]


class LezaError(Exception):
    """Base class of every error this library raises."""


class LezaConfigError(LezaError, ValueError):
    """Bad configuration: a storage URL, a GeoIP file, a proxy list, a number.

    Raised when ``Leza(...)`` is built, with a message that names the setting
    and the offending value, so a misconfigured app fails at start, not later.
    """


class StorageCapabilityError(LezaError, NotImplementedError):
    """The storage backend does not declare a capability a feature needs.

    Raised before the feature starts (``leza verify``, ``leza purge``,
    ``leza forget``, ``leza.query.traffic()``), with one sentence naming the
    backend, the feature and the capability (docs/storage.md#capabilities).
    A ``NotImplementedError`` too, as the methods' defaults raised before.
    """

    def __init__(self, message: str, capability: str | None = None) -> None:
        super().__init__(message)
        self.capability = capability
