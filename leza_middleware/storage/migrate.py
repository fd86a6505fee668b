"""Schema migrations of the SQL backend: Alembic revisions shipped in the package.

:func:`migrate` (``leza migrate``, ``manage.py leza_migrate``, and
``Leza(migrate=True)`` at the first storage setup) brings Leza's tables to
the newest revision (:data:`HEAD`) without losing a row. The revisions live in
``migrations/versions``; there is no ``alembic.ini``: :func:`alembic_config`
builds the configuration in code.

* **Its own version table.** The revision is kept in ``leza_alembic_version``
  and Alembic looks at ``leza_*`` tables only (:func:`include_object`), so
  Leza shares a database with an application that has its own Alembic
  (``alembic_version``) without either seeing the other's tables; the
  application's ``env.py`` passes :func:`exclude_leza` so that its
  autogenerate leaves Leza's tables alone.
* **Fresh databases** skip the revisions: ``SQLStorage.setup()`` creates the
  tables of the models at once and records :data:`HEAD` (:func:`ensure_schema`).
* **Adoption.** A database whose tables ``setup()`` created before migrations
  existed has no version table; its revision is recognised by the tables it
  has (:attr:`SchemaState.detected`) and recorded before anything else runs.
* **One migrator at a time.** Every step that changes the schema or the
  version runs in one transaction holding :func:`migration_lock` (PostgreSQL:
  ``pg_advisory_xact_lock``, per schema; SQLite: ``BEGIN IMMEDIATE``), so
  several workers starting at once, or ``leza migrate`` run from two hosts,
  migrate once; the others wait, then find the work done. DDL is
  transactional on both databases: a failed upgrade leaves nothing half done.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy import (
    Column,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection
from sqlalchemy.schema import CreateTable

from ..errors import LezaConfigError, LezaError
from .base import Storage
from .models import metadata
from .sql import SQLStorage, parse_sql_url

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "HEAD",
    "PG_LOCK_CLASS",
    "REVISIONS",
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "MigrationResult",
    "SchemaState",
    "alembic_config",
    "current_revision",
    "ensure_schema",
    "exclude_leza",
    "include_object",
    "migrate",
    "migration_lock",
    "migration_sql",
    "schema_state",
]

log = logging.getLogger("leza_middleware")

#: Where Leza records its schema revision (never the application's ``alembic_version``).
VERSION_TABLE = "leza_alembic_version"
#: Every revision, oldest first (a straight line; tests check it against the scripts).
REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005")
#: The revision of the models in :mod:`.models`: what a fresh ``setup()`` records.
HEAD = REVISIONS[-1]
#: The Alembic script directory inside the package.
SCRIPT_LOCATION = str(Path(__file__).resolve().with_name("migrations"))

# Adoption of a database made by setup() before migrations existed: the newest
# revision all of whose markers (tables, and "table.column" for added columns)
# are there; any Leza table means 0001. All of a revision's additions are listed,
# so that a database with only some of them is not taken for the newer revision.
# Databases made since are recorded by setup(); later revisions' markers only
# serve a database whose version table was lost.
_TRACE_MARKERS = {"leza_audit.session_id", "leza_advisory.request_id", "leza_advisory.session_id"}
_ADOPTION: tuple[tuple[str, frozenset[str]], ...] = (
    ("0005", frozenset(_TRACE_MARKERS)),
    ("0004", frozenset({"leza_traffic_minute", "leza_traffic_hour"})),
    ("0003", frozenset({"leza_audit_redaction", "leza_access.headers"})),
    ("0002", frozenset({"leza_audit_purge", "leza_log", "leza_advisory", "leza_check"})),
    ("0001", frozenset()),
)
# The tables whose columns the markers name.
_MARKED_COLUMNS = frozenset(m.partition(".")[0] for _, ms in _ADOPTION for m in ms if "." in m)

# Alembic's own definition of a version table, under Leza's name: setup() records
# a fresh database's revision without importing Alembic.
_version = Table(
    VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)

#: PostgreSQL: ``pg_advisory_xact_lock(PG_LOCK_CLASS, hashtext(current_schema()))``,
#: Leza's migrations ("LZMG") in one schema (``pg_locks.classid``); schemas (tests,
#: tenants) do not wait for each other.
PG_LOCK_CLASS = 0x4C5A4D47
#: How long a SQLite migrator waits for another one to finish (ms).
SQLITE_LOCK_TIMEOUT_MS = 600_000

# (database, revision) already warned about as not at HEAD, once per process.
_warned: set[tuple[str, str | None]] = set()


def is_leza_table(name: str | None) -> bool:
    return bool(name) and str(name).startswith("leza_") and name != VERSION_TABLE


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic ``include_object`` of Leza's environment: its ``leza_*`` tables only."""
    if type_ == "table":
        return is_leza_table(name)
    table = getattr(obj, "table", None)
    return table is None or is_leza_table(getattr(table, "name", None))


def exclude_leza(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """``include_object`` for an **application's** Alembic ``env.py`` sharing the
    database with Leza: everything but Leza's tables and ``leza_alembic_version``,
    so ``alembic revision --autogenerate`` does not propose to drop them."""
    if type_ == "table":
        return not str(name or "").startswith("leza_")
    table = getattr(obj, "table", None)
    return table is None or not str(getattr(table, "name", "")).startswith("leza_")


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class SchemaState:
    """What a database holds of Leza's schema."""

    #: The revision in ``leza_alembic_version`` (None: no version recorded).
    recorded: str | None
    #: Leza's tables present (the version table aside).
    tables: frozenset[str]
    #: ``table.column`` of the columns adoption looks for (in tables that exist).
    columns: frozenset[str] = frozenset()

    @property
    def fresh(self) -> bool:
        """No Leza table and no version: ``setup()`` creates the schema at :data:`HEAD`."""
        return self.recorded is None and not self.tables

    @property
    def detected(self) -> str | None:
        """For tables without a recorded version (made by ``setup()`` before
        migrations existed): the revision they match; None when there are none."""
        if not self.tables:
            return None
        present = self.tables | self.columns
        for revision, markers in _ADOPTION:
            if markers <= present:
                return revision
        return REVISIONS[0]  # pragma: no cover - _ADOPTION ends with an empty set

    @property
    def revision(self) -> str | None:
        """The revision the database is at: recorded, else detected, else None (empty)."""
        return self.recorded if self.recorded is not None else self.detected

    @property
    def known(self) -> bool:
        """False when a newer leza-middleware recorded a revision this one does not have."""
        return self.revision is None or self.revision in REVISIONS

    def describe(self) -> str:
        if self.fresh:
            return "no Leza tables yet"
        where = self.revision
        head = "head" if where == HEAD else f"head is {HEAD}"
        if not self.known:
            head = f"newer than this leza-middleware, whose head is {HEAD}"
        if self.recorded is None:
            return f"{where} (not recorded: tables made before migrations; {head})"
        return f"{where} ({head})"


def read_state(conn: Connection) -> SchemaState:
    """The schema state, read on ``conn`` (inside its transaction, if any)."""
    inspector = inspect(conn)
    names = set(inspector.get_table_names())
    recorded: str | None = None
    if VERSION_TABLE in names:
        versions = list(conn.execute(select(_version.c.version_num)).scalars())
        if len(versions) > 1:
            raise LezaError(
                f"{VERSION_TABLE} holds several revisions ({', '.join(sorted(versions))}); "
                "Leza's migrations are a straight line: keep the newest one"
            )
        recorded = versions[0] if versions else None
    tables = frozenset(n for n in names if is_leza_table(n))
    columns: set[str] = set()
    if recorded is None:  # only adoption needs them
        for table in _MARKED_COLUMNS & tables:
            columns.update(f"{table}.{c['name']}" for c in inspector.get_columns(table))
    return SchemaState(recorded, tables, frozenset(columns))


def _record(conn: Connection, revision: str) -> None:
    """Record ``revision`` as the database's (Alembic's ``stamp``)."""
    _version.create(conn, checkfirst=True)
    conn.execute(delete(_version))
    conn.execute(_version.insert().values(version_num=revision))


def _open(target: str | URL | Storage) -> tuple[SQLStorage, bool]:
    """The SQL storage ``target`` names, and whether it was opened here (to close)."""
    if isinstance(target, SQLStorage):
        return target, False
    if isinstance(target, Storage):
        raise LezaConfigError(f"{target.describe()} has no SQL schema: nothing to migrate")
    if isinstance(target, str):
        scheme = target.strip().partition("://")[0].lower()
        if scheme in ("memory", "jsonl"):
            raise LezaConfigError(f"{scheme}:// storage has no SQL schema: nothing to migrate")
    return SQLStorage(target), True


def _missing_file(storage: SQLStorage) -> bool:
    """A SQLite file that does not exist (connecting would create it)."""
    url = storage.url
    db = url.database or ""
    if url.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return False
    if db.startswith("file:") or "mode" in url.query:
        return False
    return not os.path.exists(db)


def _peek(storage: SQLStorage) -> SchemaState:
    with storage.engine.connect() as conn:
        return read_state(conn)


def schema_state(target: str | URL | Storage) -> SchemaState:
    """The schema state of a SQL storage (a missing SQLite file is not created)."""
    storage, owned = _open(target)
    try:
        return SchemaState(None, frozenset()) if _missing_file(storage) else _peek(storage)
    finally:
        if owned:
            storage.close()


def current_revision(target: str | URL | Storage) -> str | None:
    """The revision a database is at: recorded, else recognised from its tables
    (a database made before migrations), else None (no Leza tables)."""
    return schema_state(target).revision


# --------------------------------------------------------------------------- the lock


@contextlib.contextmanager
def _locked(storage: SQLStorage) -> Iterator[Connection]:
    with storage.engine.connect() as conn:
        backend = conn.dialect.name
        if backend == "sqlite":
            # BEGIN IMMEDIATE takes the database's write lock up front; another
            # migrator waits for it in SQLite's busy handler, for up to this long.
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_LOCK_TIMEOUT_MS}")
            conn.commit()
            try:
                with conn.begin():
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    yield conn
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(storage.busy_timeout_ms)}")
                conn.commit()
            return
        with conn.begin():
            if backend == "postgresql":
                # Released when the transaction ends, however it ends.
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:cls, hashtext(current_schema()))"),
                    {"cls": PG_LOCK_CLASS},
                )
            yield conn


@contextlib.contextmanager
def migration_lock(target: str | URL | Storage) -> Iterator[Connection]:
    """A connection, in a transaction that holds Leza's migration lock until the
    block ends (committed on success, rolled back on an exception).

    PostgreSQL: a transaction-level advisory lock, per schema (other sessions
    keep reading and writing events). SQLite: ``BEGIN IMMEDIATE``, the database's
    write lock (other processes' writes wait, as for any write). Other
    databases: a plain transaction.
    """
    storage, owned = _open(target)
    try:
        with _locked(storage) as conn:
            yield conn
    finally:
        if owned:
            storage.close()


# --------------------------------------------------------------------------- Alembic


def alembic_config(
    url: str | URL | None = None,
    *,
    connection: Connection | None = None,
    dialect_name: str | None = None,
    output: TextIO | None = None,
) -> Config:
    """The Alembic configuration of Leza's migrations, built in code.

    Give ``connection`` to run on it (inside its transaction), ``url`` to let
    the environment connect by itself (contributors: ``command.revision(cfg,
    "…", autogenerate=True, rev_id="0003")``), ``dialect_name`` for offline SQL
    written to ``output``.
    """
    from alembic.config import Config

    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION.replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("file_template", "v%%(rev)s_%%(slug)s")  # versions/v0004_….py
    if connection is not None:
        cfg.attributes["connection"] = connection
    if url is not None:
        cfg.attributes["url"] = parse_sql_url(url)
    if dialect_name is not None:
        cfg.attributes["dialect_name"] = dialect_name
    return cfg


@dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate` did: the revision before and after (None: no tables)."""

    before: str | None
    after: str | None
    #: Set when the database had tables made before migrations existed: the
    #: revision recognised and recorded for them before upgrading.
    adopted: str | None = None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _unknown(storage: SQLStorage, state: SchemaState) -> LezaError:
    return LezaError(
        f"the Leza tables in {storage.describe_url()} are at revision {state.revision}, "
        f"which this leza-middleware does not know (its newest is {HEAD}): a newer "
        "leza-middleware migrated them; upgrade leza-middleware"
    )


def _upgrade(
    revision: str,
    *,
    conn: Connection | None = None,
    dialect_name: str | None = None,
    sql_output: TextIO | None = None,
) -> None:
    """Run the revisions up to ``revision`` on ``conn``, or write their SQL for
    ``dialect_name`` to ``sql_output``."""
    from alembic import command
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        if sql_output is None:
            command.upgrade(alembic_config(connection=conn), revision)
        else:
            cfg = alembic_config(dialect_name=dialect_name, output=sql_output)
            command.upgrade(cfg, revision, sql=True)
    except (CommandError, RevisionError) as exc:
        raise LezaError(f"cannot migrate to {revision!r}: {exc}") from None


def _refuse_downgrade(state: SchemaState, revision: str) -> None:
    """An upgrade to an older revision is a no-op for Alembic: say so instead."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if state.revision is None:
        return
    try:
        script = ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    except CommandError:
        return  # not a revision: the upgrade says so
    target = -1 if script is None else REVISIONS.index(script.revision)
    if target < REVISIONS.index(state.revision):
        raise LezaError(
            f"the database is at revision {state.revision}, newer than {revision!r}: "
            "leza migrate only upgrades (see docs/migrations.md for downgrades)"
        )


def migrate(target: str | URL | Storage, revision: str = "head") -> MigrationResult:
    """Upgrade Leza's tables to ``revision`` (default: the newest), under the
    migration lock, in one transaction.

    ``target`` is a storage URL or a :class:`~.sql.SQLStorage` (left open).
    An empty database gets every revision in turn; one made before migrations
    existed is adopted first (:attr:`SchemaState.detected`). Running it again is
    a no-op. Downgrades are not done here (see docs/migrations.md).
    """
    storage, owned = _open(target)
    try:
        with _locked(storage) as conn:
            state = read_state(conn)
            if not state.known:
                raise _unknown(storage, state)
            _refuse_downgrade(state, revision)
            adopted = None
            if state.recorded is None and state.detected is not None:
                adopted = state.detected
                _record(conn, adopted)
            _upgrade(revision, conn=conn)
            after = read_state(conn).recorded
        where = storage.describe_url()
        if adopted is not None:
            log.info("leza: %s: tables made before migrations recorded at %s", where, adopted)
        if after != state.revision:
            log.info("leza: %s: migrated from %s to %s", where, state.revision or "empty", after)
        return MigrationResult(before=state.revision, after=after, adopted=adopted)
    finally:
        if owned:
            storage.close()


def migration_sql(target: str | URL | Storage, output: TextIO, revision: str = "head") -> None:
    """Write the SQL that :func:`migrate` would run, without running it (for a DBA).

    Starts from the database's revision (read, not changed; a missing SQLite
    file counts as empty); a database made before migrations gets the
    statements recording its revision first. Unlike :func:`migrate`, takes no lock.
    """
    storage, owned = _open(target)
    try:
        state = SchemaState(None, frozenset()) if _missing_file(storage) else _peek(storage)
        if not state.known:
            raise _unknown(storage, state)
        dialect = storage.engine.dialect
        output.write(f"-- Leza schema of {storage.describe_url()}: {state.describe()}\n")
        if state.recorded is None and state.detected is not None:
            output.write("-- record the revision of tables made before migrations\n")
            output.write(f"{str(CreateTable(_version).compile(dialect=dialect)).strip()};\n\n")
            insert = _version.insert().values(version_num=state.detected)
            sql = insert.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
            output.write(f"{sql};\n\n")
        start = state.revision
        span = f"{start}:{revision}" if start else revision
        _upgrade(span, dialect_name=dialect.name, sql_output=output)
    finally:
        if owned:
            storage.close()


# --------------------------------------------------------------------------- setup()


def ensure_schema(storage: SQLStorage) -> None:
    """``SQLStorage.setup()``: make the database usable by this version.

    * fresh: create the models' tables and record :data:`HEAD` (under the lock,
      so that the workers starting together create it once);
    * at :data:`HEAD`: nothing, unless a table is missing (``CREATE … IF NOT
      EXISTS`` then);
    * made before migrations: record the revision its tables show;
    * older: upgraded when ``storage.auto_migrate`` (``Leza(migrate=True)``),
      else left alone with a warning naming ``leza migrate``; newer (a newer
      leza-middleware migrated it): left alone with a warning.
    """
    state = _peek(storage)
    if state.fresh:
        with _locked(storage) as conn:
            state = read_state(conn)
            if state.fresh:
                storage.create_tables(conn)
                _record(conn, HEAD)
                return
    if state.revision != HEAD and state.known and storage.auto_migrate:
        migrate(storage)
        state = _peek(storage)
    elif state.recorded is None and state.tables:
        with _locked(storage) as conn:
            state = read_state(conn)
            if state.recorded is None and state.detected is not None:
                _record(conn, state.detected)
                log.info("leza: %s: tables made before migrations recorded at revision %s",
                         storage.describe_url(), state.detected)  # fmt: skip
    if state.revision == HEAD:
        # No DDL when every table is there: on PostgreSQL even CREATE INDEX IF NOT
        # EXISTS locks its table, and would deadlock with the workers already writing.
        if not frozenset(metadata.tables) <= state.tables:
            with storage.engine.begin() as conn:  # a table dropped by hand: made again
                storage.create_tables(conn)
        return
    where = storage.describe_url()
    if (where, state.revision) in _warned:  # setup() runs for writes and for reads
        return
    _warned.add((where, state.revision))
    if not state.known:
        log.warning(
            "leza: the Leza tables in %s are at schema revision %s, newer than this "
            "leza-middleware knows (%s); left as they are",
            where, state.revision, HEAD,
        )  # fmt: skip
    else:
        log.warning(
            "leza: the Leza tables in %s are at schema revision %s; this leza-middleware "
            "needs %s. Run `leza migrate --storage URL` (or set migrate=True / LEZA_MIGRATE=1 "
            "to migrate at startup); until then, writes that need the new tables fail and "
            "their batches are spilled",
            where, state.revision, HEAD,
        )  # fmt: skip
