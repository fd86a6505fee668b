"""Traffic rollups (STATE) and the access ``endpoint`` filter's index.

``leza_traffic_minute`` and ``leza_traffic_hour``: per bucket, method label
and route label, the request counts by outcome, logins, the duration sum,
the newest request and a 29-bucket latency histogram (``h00`` … ``h28``).
``leza_traffic_mark``: where the hour rows stop being complete.
``ix_leza_access_route_ts``: ACCESS filtered by endpoint, newest first.

The upgrade backfills the rollups from the access events already stored, so
STATE shows their history at once: one ``INSERT … SELECT … GROUP BY`` per day
of events (a bounded amount of work per statement), then the hours from the
minutes, and the mark after the last hour summed. The labels and buckets are
those of ``state/labels.py`` and ``state/traffic.py`` at this revision,
written out here so that later changes to that code cannot change what this
revision does. On PostgreSQL the access
table is locked against writes (``SHARE``) until the upgrade commits, so no
event is written between the backfill's reads and the tables' first use:
writers wait (the recorder's queue holds their events), readers do not.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HIST = tuple(f"h{i:02d}" for i in range(29))
_COUNTS = ("requests", "success", "client_errors", "server_errors", "denied",
           "logins", "login_failures")  # fmt: skip
_COLUMNS = ("ts", "method", "route", *_COUNTS, "duration_us", "last_seen", *_HIST)
# Upper bounds (µs, inclusive) of h00 … h27; h28 is everything above.
_BOUNDS_US = (
    250, 400, 600, 1_000, 1_500, 2_500, 4_000, 6_000, 10_000, 15_000, 25_000, 40_000,
    60_000, 100_000, 150_000, 250_000, 400_000, 600_000, 1_000_000, 1_500_000, 2_500_000,
    4_000_000, 6_000_000, 10_000_000, 15_000_000, 25_000_000, 40_000_000, 60_000_000,
)  # fmt: skip
_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "WS")
_ROUTE_MAX = 256
_MINUTE = 60_000_000
_HOUR = 3_600_000_000
_DAY = 86_400_000_000
_TABLES = ("leza_traffic_minute", "leza_traffic_hour")
_MARK = "leza_traffic_mark"


def _create(name: str) -> None:
    op.create_table(
        name,
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        *(sa.Column(c, sa.Integer(), nullable=False) for c in _COUNTS),
        sa.Column("duration_us", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        *(sa.Column(c, sa.Integer(), nullable=False) for c in _HIST),
        sa.PrimaryKeyConstraint("ts", "method", "route", name=f"pk_{name}"),
        sqlite_with_rowid=False,
    )


def _floor(column: str, step: int) -> str:
    """``column`` rounded down to a multiple of ``step``, also below the epoch
    (integer division truncates towards zero in both databases). No ``%``: the
    offline SQL (``leza migrate --sql``) would show it doubled for psycopg."""
    return (
        f"(CASE WHEN {column} >= 0 THEN ({column} / {step}) * {step} "
        f"ELSE (({column} - {step - 1}) / {step}) * {step} END)"
    )


def _minutes_select(where: str) -> str:
    """The minute rollups of the access rows matching ``where``."""
    denied = "outcome = 'denied'"
    server = "(outcome = 'error' OR status IS NULL OR status < 100 OR status >= 500)"
    client = "(outcome = 'failure' OR status >= 400)"
    methods = ", ".join(f"'{m}'" for m in _METHODS)
    hist = []
    for i in range(len(_HIST)):
        if i == 0:
            cond = f"duration_us <= {_BOUNDS_US[0]}"
        elif i == len(_BOUNDS_US):
            cond = f"duration_us > {_BOUNDS_US[-1]}"
        else:
            cond = f"duration_us > {_BOUNDS_US[i - 1]} AND duration_us <= {_BOUNDS_US[i]}"
        hist.append(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)")
    return (
        f"SELECT {_floor('ts', _MINUTE)}, "
        f"CASE WHEN method IN ({methods}) THEN method ELSE 'OTHER' END, "
        "CASE WHEN route IS NULL THEN '(unmatched)' "
        f"WHEN length(route) > {_ROUTE_MAX} THEN substr(route, 1, {_ROUTE_MAX - 1}) || '…' "
        "ELSE route END, "
        "COUNT(*), "
        f"SUM(CASE WHEN {denied} OR {server} OR {client} THEN 0 ELSE 1 END), "
        f"SUM(CASE WHEN {denied} OR {server} THEN 0 WHEN {client} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {denied} THEN 0 WHEN {server} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {denied} THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN action = 'login' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN action = 'login_failed' THEN 1 ELSE 0 END), "
        "SUM(duration_us), MAX(ts), "
        f"{', '.join(hist)} "
        f"FROM leza_access {where} GROUP BY 1, 2, 3"
    )


def _hours_select(where: str) -> str:
    sums = ", ".join(f"SUM({c})" for c in (*_COUNTS, "duration_us"))
    hist = ", ".join(f"SUM({c})" for c in _HIST)
    return (
        f"SELECT {_floor('ts', _HOUR)}, method, route, {sums}, MAX(last_seen), {hist} "
        f"FROM leza_traffic_minute {where} GROUP BY 1, 2, 3"
    )


def _backfill() -> None:
    columns = ", ".join(_COLUMNS)
    into_minutes = f"INSERT INTO leza_traffic_minute ({columns}) "
    into_hours = f"INSERT INTO leza_traffic_hour ({columns}) "
    # Every hour with events is summed: the mark goes after the last one.
    mark = (
        f"INSERT INTO {_MARK} (id, hours_until) "
        f"SELECT 1, COALESCE({_floor('MAX(ts)', _HOUR)} + {_HOUR}, 0) FROM leza_traffic_minute"
    )
    if context.is_offline_mode():
        op.execute(into_minutes + _minutes_select(""))
        op.execute(into_hours + _hours_select(""))
        op.execute(mark)
        return
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("LOCK TABLE leza_access IN SHARE MODE"))
    where = "WHERE ts >= :lo AND ts < :hi"
    minutes = sa.text(into_minutes + _minutes_select(where))
    hours = sa.text(into_hours + _hours_select(where))
    first = sa.text("SELECT MIN(ts) FROM leza_access WHERE ts >= :lo")
    lo = conn.execute(sa.text("SELECT MIN(ts) FROM leza_access")).scalar()
    while lo is not None:
        lo -= lo % _DAY  # whole days: every minute and hour falls in one slice
        hi = lo + _DAY
        conn.execute(minutes, {"lo": lo, "hi": hi})
        conn.execute(hours, {"lo": lo, "hi": hi})
        lo = conn.execute(first, {"lo": hi}).scalar()  # skips days without events
    conn.execute(sa.text(mark))


def upgrade() -> None:
    for name in _TABLES:
        _create(name)
    op.create_table(
        _MARK,
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hours_until", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_leza_access_route_ts", "leza_access", ["route", "ts"])
    _backfill()


def downgrade() -> None:
    op.drop_index("ix_leza_access_route_ts", table_name="leza_access")
    op.drop_table(_MARK)
    for name in reversed(_TABLES):
        op.drop_table(name)
