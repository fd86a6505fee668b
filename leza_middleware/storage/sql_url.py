"""URL handling of the SQL backend, without connecting: a storage URL checked
(dialect, driver installed and synchronous, database with an idempotent insert,
SQLite file in a writable directory), its password hidden wherever it is shown,
and the engine's options and SQLite's connection pragmas.

Also the per-database facts the write path builds its statements from
(:data:`CONFLICT`, :data:`PLACEHOLDERS`): a URL is accepted only when they
cover it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from ..errors import LezaConfigError

__all__ = [
    "CONFLICT",
    "PLACEHOLDERS",
    "SUPPORTED_URLS",
    "describe_sql_url",
    "parse_sql_url",
    "redact_url",
    "set_sqlite_pragmas",
    "sql_engine_options",
    "sqlite_in_memory",
]

#: Backends with an idempotent INSERT: (statement head, statement tail; ``{pk}``
#: is the primary key column). Only a duplicate key may be ignored: SQLite's
#: INSERT OR IGNORE and MySQL's INSERT IGNORE would also skip rows violating
#: NOT NULL, silently; SQLite's upsert clause (SQLite >= 3.24) does not.
CONFLICT: dict[str, tuple[str, str]] = {
    "sqlite": ("INSERT INTO", " ON CONFLICT DO NOTHING"),
    "postgresql": ("INSERT INTO", " ON CONFLICT DO NOTHING"),
    "mysql": ("INSERT INTO", " ON DUPLICATE KEY UPDATE {pk} = {pk}"),
    "mariadb": ("INSERT INTO", " ON DUPLICATE KEY UPDATE {pk} = {pk}"),
}
PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_DRIVER_HINTS = {
    "psycopg": "install leza-middleware[postgres] (pip install 'leza-middleware[postgres]')",
    "psycopg2": "pip install psycopg2-binary, or use postgresql+psycopg:// with "
    "leza-middleware[postgres]",
    "pg8000": "pip install pg8000",
    "mysqldb": "pip install mysqlclient",
    "pymysql": "pip install pymysql",
    "mysqlconnector": "pip install mysql-connector-python",
    "mariadbconnector": "pip install mariadb",
    "pysqlite": "use a Python built with the sqlite3 module",
}
SUPPORTED_URLS = (
    "sqlite:///path/to/leza.db, postgresql+psycopg://user@host/db (postgresql:// is the "
    "same), mysql+pymysql://… (any installed SQLAlchemy driver of SQLite, PostgreSQL, "
    "MySQL or MariaDB), memory://, jsonl:///path/to/dir, clickhouse://host:9000/db"
)
_ALIASES = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgres+psycopg": "postgresql+psycopg",
}


def redact_url(text: str | URL) -> str:
    """``text`` with the password of a ``scheme://user:password@host`` URL hidden."""
    if isinstance(text, URL):
        return text.render_as_string(hide_password=True)
    try:
        return make_url(text).render_as_string(hide_password=True)
    except Exception:
        scheme, sep, rest = text.partition("://")
        if not sep or "@" not in rest:
            return text
        userinfo, _, hostpart = rest.rpartition("@")
        user = userinfo.partition(":")[0]
        return f"{scheme}://{user}:***@{hostpart}" if ":" in userinfo else text


def parse_sql_url(spec: str | URL) -> URL:
    """Validate a SQLAlchemy URL for :class:`SQLStorage` without connecting.

    Raises :class:`LezaConfigError` naming the problem: unparseable URL, unknown
    dialect or driver, driver not installed, async driver, unsupported database,
    SQLite file in a missing or read-only directory.
    """
    shown = redact_url(spec)
    try:
        url = make_url(spec)
    except (ArgumentError, ValueError) as exc:
        raise LezaConfigError(
            f"storage URL {shown!r} cannot be parsed ({exc}); expected one of: {SUPPORTED_URLS}"
        ) from None
    alias = _ALIASES.get(url.drivername.lower())
    if alias is not None:
        url = url.set(drivername=alias)
    shown = url.render_as_string(hide_password=True)
    backend = url.get_backend_name()
    driver = url.drivername.partition("+")[2]
    try:
        dialect_cls = url.get_dialect()
    except NoSuchModuleError:
        try:
            make_url(f"{backend}://").get_dialect()
        except NoSuchModuleError:
            raise LezaConfigError(
                f"unknown storage URL scheme {url.drivername!r} in {shown!r}; "
                f"supported: {SUPPORTED_URLS}"
            ) from None
        raise LezaConfigError(
            f"unknown {backend} driver {driver!r} in storage URL {shown!r}; "
            f"supported: {SUPPORTED_URLS}"
        ) from None
    if backend not in CONFLICT:
        raise LezaConfigError(
            f"storage URL {shown!r}: the {backend} database is not supported (no idempotent "
            f"insert); supported: {SUPPORTED_URLS}"
        )
    if dialect_cls.is_async:
        raise LezaConfigError(
            f"storage URL {shown!r} names the async driver {driver!r}; the recorder writes "
            "from a thread, use a synchronous driver such as postgresql+psycopg://"
        )
    driver = dialect_cls.driver  # the default driver when the URL names none
    try:
        dialect_cls.import_dbapi()
    except ImportError as exc:
        hint = _DRIVER_HINTS.get(driver, f"install the Python package providing {driver!r}")
        raise LezaConfigError(
            f"storage URL {shown!r} needs the {driver!r} database driver, which is not "
            f"installed ({exc}); {hint}"
        ) from None
    paramstyle = getattr(dialect_cls, "default_paramstyle", "named")
    if paramstyle not in PLACEHOLDERS:
        raise LezaConfigError(
            f"storage URL {shown!r}: driver {driver!r} uses the {paramstyle!r} parameter "
            "style, which is not supported"
        )
    if backend == "sqlite":
        _check_sqlite_file(url)
    return url


def sqlite_in_memory(url: URL) -> bool:
    db = url.database
    return not db or db == ":memory:" or url.query.get("mode") == "memory"


def _check_sqlite_file(url: URL) -> None:
    db = url.database
    if sqlite_in_memory(url):
        warnings.warn(
            f"storage {url.render_as_string()!r} is an in-memory SQLite database: it lives "
            "and dies with this process and is not shared with other workers; use "
            "sqlite:///path/to/leza.db to keep events",
            UserWarning,
            stacklevel=4,
        )
        return
    assert db is not None
    if db.startswith("file:"):  # a SQLite URI (uri=true): let SQLite interpret it
        return
    path = os.path.abspath(db)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise LezaConfigError(
            f"SQLite storage {db!r}: the directory {parent!r} does not exist; create it "
            "or choose another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LezaConfigError(
            f"SQLite storage {db!r}: the directory {parent!r} is not writable (SQLite "
            "creates its -wal and -shm files beside the database)"
        )
    if os.path.isdir(path):
        raise LezaConfigError(f"SQLite storage {db!r} is a directory, not a database file")
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise LezaConfigError(f"SQLite storage {db!r}: the file is not readable and writable")


def sql_engine_options(
    url: URL, in_memory: bool, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``create_engine`` options of a checked URL, ``extra`` (the user's) last."""
    options: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        options["connect_args"] = {"check_same_thread": False}
        if in_memory:
            # One connection for every thread, or each would see its own database.
            options["poolclass"] = StaticPool
    else:
        options["pool_pre_ping"] = True
    options.update(extra or {})
    return options


def set_sqlite_pragmas(dbapi_conn: Any, busy_timeout_ms: int) -> None:
    """WAL, ``synchronous=NORMAL`` and the busy timeout on a new SQLite connection."""
    cur = dbapi_conn.cursor()
    try:
        # A read-only file cannot switch to WAL; reads still work.
        with contextlib.suppress(Exception):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    finally:
        cur.close()


def describe_sql_url(url: URL) -> str:
    """``url`` as shown in logs and errors: no password, a SQLite file's path absolute."""
    if url.get_backend_name() == "sqlite" and not sqlite_in_memory(url) and url.database:
        db = url.database
        if not db.startswith("file:") and not os.path.isabs(db):
            # Absolute, so two apps using sqlite:///leza.db from different
            # directories are told apart (this also keys the spill folder).
            url = url.set(database=os.path.abspath(db))
    return url.render_as_string(hide_password=True)
