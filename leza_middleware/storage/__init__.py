"""Storage backends and :func:`open_storage`, which turns a ``storage=`` setting into one."""

from __future__ import annotations

from ..errors import LezaConfigError
from .base import Page, QueryFilter, Storage
from .jsonl import JSONLStorage
from .memory import MemoryStorage
from .sql import SUPPORTED_URLS, SQLStorage, redact_url

__all__ = [
    "JSONLStorage",
    "MemoryStorage",
    "Page",
    "QueryFilter",
    "SQLStorage",
    "Storage",
    "open_storage",
]


def open_storage(spec: str | Storage) -> Storage:
    """A :class:`Storage` from a URL, or ``spec`` itself when it is one.

    ``sqlite:///path.db`` (the default), any SQLAlchemy URL of SQLite, PostgreSQL
    (``postgresql://`` means psycopg 3), MySQL or MariaDB, ``memory://`` or
    ``jsonl:///path/to/dir``. Checks the URL, the driver and the SQLite/JSONL
    path without connecting; raises :class:`LezaConfigError` naming the problem.
    """
    if isinstance(spec, Storage):
        return spec
    if isinstance(spec, type) and issubclass(spec, Storage):
        raise LezaConfigError(
            f"storage={spec.__name__} is a class; pass an instance, e.g. {spec.__name__}(...)"
        )
    if not isinstance(spec, str):
        raise LezaConfigError(
            f"storage must be a URL string or a Storage instance, not {type(spec).__name__} "
            f"({spec!r:.60}); e.g. storage='sqlite:///leza.db'"
        )
    text = spec.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise LezaConfigError(
            f"storage {redact_url(text)!r} is not a URL (no scheme://); expected one of: "
            f"{SUPPORTED_URLS}"
        )
    scheme = scheme.lower()
    if scheme == "memory":
        if rest.strip("/"):
            raise LezaConfigError(f"storage URL {text!r}: memory:// takes no path or options")
        return MemoryStorage()
    if scheme == "jsonl":
        return JSONLStorage.from_url(text)
    return SQLStorage(text)
