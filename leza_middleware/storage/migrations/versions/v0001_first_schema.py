"""The first schema: access events with their device, geo and performer rows,
sessions, and the audit log with its checkpoints.

Leza's tables as ``SQLStorage.setup()`` created them before migrations existed
(commit 9d84a54); a database made then is adopted at this revision
(``leza_middleware.storage.migrate``). Columns without a server default:
defaults are set by the writer.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 22:43:02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leza_access",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("action", AutoString(), nullable=False),
        sa.Column("method", AutoString(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("route", sa.Text(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("duration_us", sa.BigInteger(), nullable=False),
        sa.Column("outcome", AutoString(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", AutoString(), nullable=False),
        sa.Column("client_ip", AutoString(), nullable=False),
        sa.Column("ip_valid", sa.Boolean(), nullable=False),
        sa.Column("peer_ip", AutoString(), nullable=False),
        sa.Column("proxy_chain", sa.Text(), nullable=False),
        sa.Column("scheme", AutoString(), nullable=False),
        sa.Column("host", AutoString(), nullable=False),
        sa.Column("app", AutoString(), nullable=False),
        sa.Column("device_key", AutoString(), nullable=True),
        sa.Column("geo_key", AutoString(), nullable=True),
        sa.Column("performer_id", AutoString(), nullable=True),
        sa.Column("performer_key", AutoString(), nullable=True),
        sa.Column("machine_id", AutoString(), nullable=True),
        sa.Column("session_hash", AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_leza_access_action_ts", "leza_access", ["action", "ts"])
    op.create_index(
        "ix_leza_access_performer_ts",
        "leza_access",
        ["performer_id", "ts"],
        sqlite_where=sa.text("performer_id IS NOT NULL"),
        postgresql_where=sa.text("performer_id IS NOT NULL"),
    )
    op.create_index("ix_leza_access_ts_id", "leza_access", ["ts", "id"])

    op.create_table(
        "leza_audit",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("app", AutoString(), nullable=False),
        sa.Column("chain", AutoString(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("action", AutoString(), nullable=False),
        sa.Column("entity_type", AutoString(), nullable=False),
        sa.Column("entity_id", AutoString(), nullable=False),
        sa.Column("actor_id", AutoString(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("request_id", AutoString(), nullable=True),
        sa.Column("client_ip", AutoString(), nullable=True),
        sa.Column("prev_hash", AutoString(), nullable=False),
        sa.Column("hash", AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_leza_audit_actor_ts", "leza_audit", ["actor_id", "ts"])
    op.create_index("ix_leza_audit_chain_seq", "leza_audit", ["chain", "seq"], unique=True)
    op.create_index("ix_leza_audit_entity", "leza_audit", ["entity_type", "entity_id", "ts"])
    op.create_index("ix_leza_audit_ts_id", "leza_audit", ["ts", "id"])

    op.create_table(
        "leza_audit_checkpoint",
        sa.Column("chain", AutoString(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", AutoString(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain"),
    )

    op.create_table(
        "leza_device",
        sa.Column("key", AutoString(), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=False),
        sa.Column("browser_type", AutoString(), nullable=False),
        sa.Column("browser_name", AutoString(), nullable=False),
        sa.Column("browser_version", AutoString(), nullable=False),
        sa.Column("engine", AutoString(), nullable=False),
        sa.Column("engine_version", AutoString(), nullable=False),
        sa.Column("os_name", AutoString(), nullable=False),
        sa.Column("os_version", AutoString(), nullable=False),
        sa.Column("os_platform", AutoString(), nullable=False),
        sa.Column("device_type", AutoString(), nullable=False),
        sa.Column("device_brand", AutoString(), nullable=False),
        sa.Column("device_model", AutoString(), nullable=False),
        sa.Column("bot_name", AutoString(), nullable=True),
        sa.Column("bot_category", AutoString(), nullable=False),
        sa.Column("bot_url", AutoString(), nullable=False),
        sa.Column("is_mobile", sa.Boolean(), nullable=False),
        sa.Column("is_tablet", sa.Boolean(), nullable=False),
        sa.Column("is_pc", sa.Boolean(), nullable=False),
        sa.Column("is_touch_capable", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )

    op.create_table(
        "leza_geo",
        sa.Column("key", AutoString(), nullable=False),
        sa.Column("country_code", AutoString(), nullable=False),
        sa.Column("country_name", AutoString(), nullable=False),
        sa.Column("region_code", AutoString(), nullable=False),
        sa.Column("region_name", AutoString(), nullable=False),
        sa.Column("city", AutoString(), nullable=False),
        sa.Column("zip_code", AutoString(), nullable=False),
        sa.Column("time_zone", AutoString(), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("metro_code", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )

    op.create_table(
        "leza_performer",
        sa.Column("key", AutoString(), nullable=False),
        sa.Column("performer_id", AutoString(), nullable=False),
        sa.Column("name", AutoString(), nullable=False),
        sa.Column("email", AutoString(), nullable=False),
        sa.Column("json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_leza_performer_performer_id", "leza_performer", ["performer_id"])

    op.create_table(
        "leza_session",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("app", AutoString(), nullable=False),
        sa.Column("session_start", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("end_reason", AutoString(), nullable=True),
        sa.Column("ip", AutoString(), nullable=False),
        sa.Column("machine_id", AutoString(), nullable=True),
        sa.Column("performer_id", AutoString(), nullable=True),
        sa.Column("performer_key", AutoString(), nullable=True),
        sa.Column("device_key", AutoString(), nullable=True),
        sa.Column("geo_key", AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_leza_session_ended_at", "leza_session", ["ended_at"])
    op.create_index(
        "ix_leza_session_performer_start", "leza_session", ["performer_id", "session_start"]
    )
    op.create_index("ix_leza_session_start_id", "leza_session", ["session_start", "id"])


def downgrade() -> None:
    for table in (
        "leza_session",
        "leza_performer",
        "leza_geo",
        "leza_device",
        "leza_audit_checkpoint",
        "leza_audit",
        "leza_access",
    ):
        op.drop_table(table)  # its indexes go with it
