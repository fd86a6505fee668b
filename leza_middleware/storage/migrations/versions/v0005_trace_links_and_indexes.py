"""Traceability: what ties records together, and the indexes that follow the ties.

``leza_audit.session_id``: the session a change was made in (its access
event's ``session_id_hash``). ``leza_advisory.request_id`` and
``session_id``: the request and session of the event that raised an
advisory. All three are nullable without a default, so adding them rewrites
no row; rows written before read back without them (no backfill: an audit
row's session is part of its chain hash, so an old row cannot be given one).

Indexes: the performer index of access events gains the session, last (a
session's requests are read through it); access events by request id, a
session's events without a performer
(``session_hash``, ``ts`` where ``performer_id`` is null: the rest of a
session's are read through the performer index) and a performer's denied
requests and failed logins (``performer_id``, ``action``, ``ts`` where
``action`` is one of them); audit rows and
advisories by request id and by session. Building the access indexes reads
the whole table once (docs/migrations.md gives the time at 10,000,000 rows).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: later changes to the models must not change this revision.
_REFUSED = "action IN ('denied', 'login_failed')"
_INDEXES: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    ("ix_leza_access_request", "leza_access", ("request_id",), None),
    ("ix_leza_access_session_anonymous", "leza_access", ("session_hash", "ts"),
     "session_hash IS NOT NULL AND performer_id IS NULL"),
    ("ix_leza_access_performer_refused", "leza_access", ("performer_id", "action", "ts"),
     _REFUSED),
    ("ix_leza_audit_request", "leza_audit", ("request_id",), None),
    ("ix_leza_audit_session_ts", "leza_audit", ("session_id", "ts"), None),
    ("ix_leza_advisory_request", "leza_advisory", ("request_id",), None),
    ("ix_leza_advisory_session_ts", "leza_advisory", ("session_id", "ts"), None),
)  # fmt: skip


def upgrade() -> None:
    # The performer index gains the session (last): a session's requests are read
    # through it, told apart from the performer's other sessions in the index.
    op.drop_index("ix_leza_access_performer_ts", table_name="leza_access")
    _performer_index(("performer_id", "ts", "session_hash"))
    op.add_column("leza_audit", sa.Column("session_id", AutoString(), nullable=True))
    op.add_column("leza_advisory", sa.Column("request_id", AutoString(), nullable=True))
    op.add_column("leza_advisory", sa.Column("session_id", AutoString(), nullable=True))
    for name, table, columns, where in _INDEXES:
        predicate = None if where is None else sa.text(where)
        op.create_index(
            name, table, list(columns), sqlite_where=predicate, postgresql_where=predicate
        )


def _performer_index(columns: tuple[str, ...]) -> None:
    where = sa.text("performer_id IS NOT NULL")
    op.create_index("ix_leza_access_performer_ts", "leza_access", list(columns),
                    sqlite_where=where, postgresql_where=where)  # fmt: skip


def downgrade() -> None:
    for name, table, _, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_index("ix_leza_access_performer_ts", table_name="leza_access")
    _performer_index(("performer_id", "ts"))
    # SQLite drops a column by copying the table: batch mode does that.
    with op.batch_alter_table("leza_advisory") as batch:
        batch.drop_column("session_id")
        batch.drop_column("request_id")
    with op.batch_alter_table("leza_audit") as batch:
        batch.drop_column("session_id")
