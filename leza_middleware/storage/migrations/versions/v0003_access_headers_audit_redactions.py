"""Allowed request headers on access events, and audit redactions (erasure).

``leza_access.headers``: a nullable column without a default, so adding it
rewrites no row (SQLite and PostgreSQL alike); existing events read back with
no headers. ``leza_audit_redaction``: a new table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("leza_access", sa.Column("headers", sa.Text(), nullable=True))

    op.create_table(
        "leza_audit_redaction",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("chain", AutoString(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", AutoString(), nullable=False),
        sa.Column("redacted_hash", AutoString(), nullable=False),
        sa.Column("redacted_at", sa.BigInteger(), nullable=False),
        sa.Column("sig", AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("leza_audit_redaction")
    # SQLite drops a column by copying the table: batch mode does that.
    with op.batch_alter_table("leza_access") as batch:
        batch.drop_column("headers")
