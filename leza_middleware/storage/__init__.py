"""Storage backends and :func:`open_storage`, which turns a ``storage=`` setting into one.

The SQL backend (and with it SQLAlchemy, SQLModel, Alembic) is imported only
when a SQL URL is opened or ``SQLStorage`` is first named: an app that records
to memory, JSON Lines or its own backend never loads them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from ..errors import LezaConfigError, StorageCapabilityError
from .base import Page, QueryFilter, Storage
from .capabilities import Capability, capabilities_of, check_declared
from .jsonl import JSONLStorage
from .memory import MemoryStorage
from .routed import PartialWriteError, RoutedStorage, backend_of, backends_of

if TYPE_CHECKING:
    from .clickhouse import ClickHouseStorage
    from .sql import SQLStorage

__all__ = [
    "Capability",
    "ClickHouseStorage",
    "JSONLStorage",
    "MemoryStorage",
    "Page",
    "PartialWriteError",
    "QueryFilter",
    "RoutedStorage",
    "SQLStorage",
    "Storage",
    "StorageCapabilityError",
    "backend_of",
    "backends_of",
    "capabilities_of",
    "is_sql",
    "open_storage",
    "preload",
]


def __getattr__(name: str) -> Any:
    if name == "SQLStorage":  # lazily: importing it loads SQLAlchemy
        from .sql import SQLStorage

        return SQLStorage
    if name == "ClickHouseStorage":  # lazily, like SQLStorage (its driver loads on connect)
        from .clickhouse import ClickHouseStorage

        return ClickHouseStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_sql(storage: object) -> TypeGuard[SQLStorage]:
    """Whether ``storage`` is a :class:`SQLStorage`, without importing SQLAlchemy
    (if the SQL module was never imported, no SQLStorage exists)."""
    sql = sys.modules.get(f"{__name__}.sql")
    return sql is not None and isinstance(storage, sql.SQLStorage)


def preload(spec: object) -> None:
    """Import the SQL backend now when ``spec`` (a ``storage=`` setting; None: the
    default, ``$LEZA_STORAGE`` or SQLite) names a SQL URL. For integrations that
    build their Leza on the first request (Django): the server's start-up pays
    for SQLAlchemy, not that request. Never raises."""
    if spec is None:
        spec = os.environ.get("LEZA_STORAGE") or "sqlite://"
    if isinstance(spec, Mapping):
        for value in spec.values():
            preload(value if value is not None else "memory://")
        return
    if isinstance(spec, str) and spec.strip().partition("://")[0].lower() not in (
        "memory",
        "jsonl",
        "clickhouse",
    ):
        with contextlib.suppress(Exception):
            importlib.import_module(f"{__name__}.sql")


def open_storage(spec: str | Storage | Mapping[str, str | Storage]) -> Storage:
    """A :class:`Storage` from a URL, or ``spec`` itself when it is one.

    ``sqlite:///path.db`` (the default), any SQLAlchemy URL of SQLite, PostgreSQL
    (``postgresql://`` means psycopg 3), MySQL or MariaDB, ``memory://``,
    ``jsonl:///path/to/dir`` or ``clickhouse://host:9000/db`` (access, log and
    advisory events only). Checks the URL, the driver and the SQLite/JSONL
    path without connecting; raises :class:`LezaConfigError` naming the problem.
    A mapping of kind (``"access"``, ``"log"``, …, ``"default"``) to URL or
    storage opens a :class:`RoutedStorage` (docs/storage.md#storage-by-kind).
    """
    if isinstance(spec, Mapping):
        return open_routed(spec)
    if isinstance(spec, Storage):
        check_declared(spec)  # an unknown or unimplemented capability fails here
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
        from .sql import SUPPORTED_URLS, redact_url

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
    if scheme == "clickhouse":
        from .clickhouse import ClickHouseStorage  # lazily: its driver is an extra

        return ClickHouseStorage(text)
    from .sql import SQLStorage

    return SQLStorage(text)


def open_routed(spec: Mapping[Any, Any]) -> Storage:
    """A :class:`RoutedStorage` from ``{kind: URL or Storage, "default": …}``.

    Each entry is opened like ``storage=`` (one error per bad entry, naming it);
    equal URLs share one backend; ``"default"`` serves every kind not named and
    may be left out only when every kind is. When every kind lands on one
    backend, that backend itself is returned.
    """
    from .routed import KINDS, RoutedStorage

    if not spec:
        raise LezaConfigError("storage mapping is empty; give at least a 'default' entry")
    opened: dict[str, Storage] = {}  # by URL: equal URLs share one backend
    routes: dict[str, Storage] = {}
    for key, value in spec.items():
        if not isinstance(key, str) or key.strip().lower() not in (*KINDS, "default"):
            raise LezaConfigError(
                f"storage mapping: unknown key {key!r}; use kinds {', '.join(KINDS)} or 'default'"
            )
        kind = key.strip().lower()
        if kind in routes:
            raise LezaConfigError(f"storage mapping: {kind!r} is given twice")
        if isinstance(value, Mapping):
            raise LezaConfigError(f"storage[{kind!r}]: a mapping cannot nest another mapping")
        text = value.strip() if isinstance(value, str) else None
        try:
            backend = opened.get(text) if text is not None else None
            if backend is None:
                backend = open_storage(value)
                if text is not None:
                    opened[text] = backend
        except LezaConfigError as exc:
            raise LezaConfigError(f"storage[{kind!r}]: {exc}") from None
        routes[kind] = backend
    default = routes.pop("default", None)
    missing = [k for k in KINDS if k not in routes]
    if missing and default is None:
        raise LezaConfigError(
            f"storage mapping: no backend for {', '.join(missing)}; add a 'default' entry"
        )
    for kind in missing:
        routes[kind] = default  # type: ignore[assignment]
    if len({id(b) for b in routes.values()}) == 1:
        return routes["access"]
    return RoutedStorage(routes)
