"""Alembic's entry point for Leza's migrations (run by :mod:`..migrate`, never imported).

Online, :func:`..migrate.migrate` hands over a connection that already holds
the migration lock inside an open transaction (``config.attributes["connection"]``):
the revisions run in that transaction, so on PostgreSQL and SQLite an upgrade
is all or nothing. Offline (``leza migrate --sql``) the SQL is rendered for the
dialect in ``config.attributes["dialect_name"]``. A :func:`..migrate.alembic_config`
built with a URL only (contributors: ``command.revision(..., autogenerate=True)``)
connects by itself.

Whatever the entry, Alembic sees only Leza's tables and keeps its version in
``leza_alembic_version``, so it never touches an application's own tables or
its ``alembic_version`` in a shared database.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from leza_middleware.storage.migrate import VERSION_TABLE, include_object
from leza_middleware.storage.models import metadata

config = context.config


def _options() -> dict[str, Any]:
    return {
        "target_metadata": metadata,
        "version_table": VERSION_TABLE,
        "include_object": include_object,
        # ALTERs of SQLite tables need a copy of the table: render them as
        # batch operations (plain ALTERs on PostgreSQL).
        "render_as_batch": True,
        "compare_type": True,
    }


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **_options())
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        dialect_name=config.attributes["dialect_name"], literal_binds=True, **_options()
    )
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    _run(config.attributes["connection"])
else:
    engine = create_engine(config.attributes["url"])
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()
