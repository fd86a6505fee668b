"""Audit purge marks, and the tables of the log, advisory and check kinds.

Only new tables: nothing of the first schema changes, so existing rows stay
exactly as they were.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 23:44:55
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leza_audit_purge",
        sa.Column("chain", AutoString(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", AutoString(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("purged_at", sa.BigInteger(), nullable=False),
        sa.Column("sig", AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("chain"),
    )

    op.create_table(
        "leza_log",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("action", AutoString(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("logger", AutoString(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("exception", sa.Text(), nullable=True),
        sa.Column("request_id", AutoString(), nullable=True),
        sa.Column("performer_id", AutoString(), nullable=True),
        sa.Column("route", AutoString(), nullable=True),
        sa.Column("origin", AutoString(), nullable=False),
        sa.Column("app", AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_leza_log_action_ts", "leza_log", ["action", "ts"])
    op.create_index("ix_leza_log_performer_ts", "leza_log", ["performer_id", "ts"])
    op.create_index("ix_leza_log_request", "leza_log", ["request_id"])
    op.create_index("ix_leza_log_ts_id", "leza_log", ["ts", "id"])

    op.create_table(
        "leza_advisory",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("action", AutoString(), nullable=False),
        sa.Column("severity", AutoString(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("performer_id", AutoString(), nullable=True),
        sa.Column("ip", AutoString(), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("app", AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_leza_advisory_action_ts", "leza_advisory", ["action", "ts"])
    op.create_index("ix_leza_advisory_performer_ts", "leza_advisory", ["performer_id", "ts"])
    op.create_index("ix_leza_advisory_ts_id", "leza_advisory", ["ts", "id"])

    op.create_table(
        "leza_check",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("action", AutoString(), nullable=False),
        sa.Column("check_name", AutoString(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("state", AutoString(), nullable=False),
        sa.Column("previous", AutoString(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("app", AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_leza_check_action_ts", "leza_check", ["action", "ts"])
    op.create_index("ix_leza_check_name_ts", "leza_check", ["check_name", "ts"])
    op.create_index("ix_leza_check_ts_id", "leza_check", ["ts", "id"])


def downgrade() -> None:
    for table in ("leza_check", "leza_advisory", "leza_log", "leza_audit_purge"):
        op.drop_table(table)  # its indexes go with it
