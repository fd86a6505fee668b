"""SQLModel table definitions of the SQL backend.

Access rows stay narrow: scalar, mostly indexed columns plus keys that
reference the wide, repetitive parts — device (one row per distinct
User-Agent), geo (one per GeoIP network) and performer (one per distinct
identity, keyed by a hash of its canonical JSON). Those are written once per
key and joined back on read.

The tables live in their own ``MetaData`` (:data:`metadata`), not in
``SQLModel.metadata``, so an application that calls
``SQLModel.metadata.create_all()`` on its own database does not get Leza's
tables created there, and ``create_all`` here touches only Leza's tables.

Writes do not go through these classes (the SQL backend builds one
``executemany`` INSERT per table from :attr:`__table__`); they exist to define
the schema once, for ``create_all``, Alembic autogenerate and ad-hoc ORM reads.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from .base import REFUSED_ACTIONS

__all__ = [
    "REFUSED_ACTIONS",
    "REFUSED_PREDICATE",
    "SESSION_ANONYMOUS",
    "TRAFFIC_COLUMNS",
    "TRAFFIC_HISTOGRAM",
    "AccessRow",
    "AdvisoryRow",
    "AuditCheckpointRow",
    "AuditPurgeRow",
    "AuditRedactionRow",
    "AuditRow",
    "CheckRow",
    "DeviceRow",
    "GeoRow",
    "LezaModel",
    "LogRow",
    "PerformerRow",
    "SessionRow",
    "access_table",
    "advisory_table",
    "audit_checkpoint_table",
    "audit_purge_table",
    "audit_redaction_table",
    "audit_table",
    "check_table",
    "device_table",
    "geo_table",
    "log_table",
    "metadata",
    "performer_table",
    "session_table",
    "traffic_hour_table",
    "traffic_mark_table",
    "traffic_minute_table",
    "traffic_tables",
]

#: The actions of the performer view's "denied requests and failed logins", and
#: the predicate of the partial index that finds them: a query names these
#: actions with literal values so that SQLite and PostgreSQL use that index.
#: (REFUSED_ACTIONS lives in base.py: trace/ reads it without SQLAlchemy.)
REFUSED_PREDICATE = "action IN ('denied', 'login_failed')"
#: The access events of a session that carry no performer.
SESSION_ANONYMOUS = "session_hash IS NOT NULL AND performer_id IS NULL"

_registry = registry()
metadata: MetaData = _registry.metadata


class LezaModel(SQLModel, registry=_registry):
    """Abstract base of Leza's tables: binds them to :data:`metadata`."""


class DeviceRow(LezaModel, table=True):
    __tablename__ = "leza_device"

    key: str = Field(primary_key=True)
    user_agent: str = Field(sa_type=Text)
    browser_type: str = ""
    browser_name: str = ""
    browser_version: str = ""
    engine: str = ""
    engine_version: str = ""
    os_name: str = ""
    os_version: str = ""
    os_platform: str = ""
    device_type: str = ""
    device_brand: str = ""
    device_model: str = ""
    bot_name: str | None = None
    bot_category: str = ""
    bot_url: str = ""
    is_mobile: bool = False
    is_tablet: bool = False
    is_pc: bool = False
    is_touch_capable: bool = False


class GeoRow(LezaModel, table=True):
    __tablename__ = "leza_geo"

    key: str = Field(primary_key=True)  # the GeoIP network, e.g. "81.2.69.128/26"
    country_code: str = ""
    country_name: str = ""
    region_code: str = ""
    region_name: str = ""
    city: str = ""
    zip_code: str = ""
    time_zone: str = ""
    latitude: float | None = None
    longitude: float | None = None
    metro_code: int = 0


class PerformerRow(LezaModel, table=True):
    __tablename__ = "leza_performer"

    key: str = Field(primary_key=True)  # blake2b of Performer.to_json()
    performer_id: str = Field(index=True)
    name: str = ""
    email: str = ""
    # Performer.to_json(): the whole identity. The attribute is not called ``json``
    # because that name is taken by pydantic's BaseModel.
    json_text: str = Field(sa_column=Column("json", Text, nullable=False))


class AccessRow(LezaModel, table=True):
    __tablename__ = "leza_access"
    # Every list query is "newest first within a time range", optionally narrowed
    # by action or performer: (ts, id) matches ORDER BY ts DESC, id DESC and the
    # keyset cursor exactly; the narrower indexes leave ``id`` out (each index
    # costs insert throughput, ~25 % for a trailing id on both) and sort only the
    # rows of one timestamp. Anonymous requests are not in the performer index.
    __table_args__: Any = (
        Index("ix_leza_access_ts_id", "ts", "id"),
        Index("ix_leza_access_action_ts", "action", "ts"),
        Index(
            "ix_leza_access_performer_ts",
            "performer_id",
            "ts",
            # Last, so a session's requests are told from the performer's other
            # sessions' inside the index (trace/views.py), without reading rows.
            "session_hash",
            sqlite_where=text("performer_id IS NOT NULL"),
            postgresql_where=text("performer_id IS NOT NULL"),
        ),
        # The ``endpoint`` filter (STATE's endpoint rows link to ACCESS with it):
        # one route's rows newest first; a method narrows them as they are read,
        # "(unmatched)" is ``route IS NULL``. No trailing id, as above.
        Index("ix_leza_access_route_ts", "route", "ts"),
        # Traceability (trace/views.py, docs/dashboard.md "Traceability"): one
        # request's events; a session's requests are read by their performer
        # within the session's time (the performer index), and the few without
        # a performer (refused after a revocation, a logout already signed out)
        # by the session: an index of every session's requests, keyed by a
        # random hash, would dirty one page per active session per batch and
        # double the write cost of an access event. And a performer's denied
        # requests and failed logins (a few % of the rows: a partial index costs
        # the other writes nothing; ``action`` in it, so that a query naming one
        # of them prefers it to the performer index whatever the planner knows).
        Index("ix_leza_access_request", "request_id"),
        Index(
            "ix_leza_access_session_anonymous",
            "session_hash",
            "ts",
            sqlite_where=text(SESSION_ANONYMOUS),
            postgresql_where=text(SESSION_ANONYMOUS),
        ),
        Index(
            "ix_leza_access_performer_refused",
            "performer_id",
            "action",
            "ts",
            sqlite_where=text(REFUSED_PREDICATE),
            postgresql_where=text(REFUSED_PREDICATE),
        ),
    )

    id: str = Field(primary_key=True)
    ts: int = Field(sa_column=Column(BigInteger, nullable=False))  # µs since the epoch, UTC
    action: str
    method: str
    endpoint: str = Field(sa_type=Text)
    route: str | None = Field(default=None, sa_type=Text)
    status: int
    duration_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    outcome: str
    reason: str = Field(sa_type=Text)
    request_id: str
    client_ip: str
    ip_valid: bool
    peer_ip: str
    proxy_chain: str = Field(default="", sa_type=Text)  # see sql.encode_chain
    scheme: str
    host: str
    app: str
    device_key: str | None = None  # -> leza_device.key
    geo_key: str | None = None  # -> leza_geo.key
    performer_id: str | None = None
    performer_key: str | None = None  # -> leza_performer.key
    machine_id: str | None = None
    session_hash: str | None = None
    # JSON object of the headers ``record_headers`` allows; NULL without any.
    headers: str | None = Field(default=None, sa_type=Text)


class SessionRow(LezaModel, table=True):
    """One user session, folded from its changes (see ``events.SessionEvent``)."""

    __tablename__ = "leza_session"
    __table_args__: Any = (
        Index("ix_leza_session_start_id", "session_start", "id"),
        Index("ix_leza_session_performer_start", "performer_id", "session_start"),
        # revocation polling: "what ended since my last look"
        Index("ix_leza_session_ended_at", "ended_at"),
    )

    id: str = Field(primary_key=True)  # keyed hash of the session key, never the key
    app: str
    session_start: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_seen: int = Field(sa_column=Column(BigInteger, nullable=False))
    ended_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    end_reason: str | None = None
    ip: str = ""
    machine_id: str | None = None
    performer_id: str | None = None
    performer_key: str | None = None  # -> leza_performer.key
    device_key: str | None = None  # -> leza_device.key
    geo_key: str | None = None  # -> leza_geo.key


class AuditRow(LezaModel, table=True):
    """One audit record: a link of its writer's tamper-evident chain."""

    __tablename__ = "leza_audit"
    __table_args__: Any = (
        Index("ix_leza_audit_ts_id", "ts", "id"),
        Index("ix_leza_audit_entity", "entity_type", "entity_id", "ts"),
        Index("ix_leza_audit_actor_ts", "actor_id", "ts"),
        Index("ix_leza_audit_chain_seq", "chain", "seq", unique=True),
        Index("ix_leza_audit_request", "request_id"),
        Index("ix_leza_audit_session_ts", "session_id", "ts"),
    )

    id: str = Field(primary_key=True)
    ts: int = Field(sa_column=Column(BigInteger, nullable=False))
    app: str
    chain: str
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    action: str
    entity_type: str
    entity_id: str
    actor_id: str | None = None
    actor_json: str | None = Field(default=None, sa_column=Column("actor", Text, nullable=True))
    before_json: str | None = Field(default=None, sa_column=Column("before", Text, nullable=True))
    after_json: str | None = Field(default=None, sa_column=Column("after", Text, nullable=True))
    diff_json: str = Field(sa_column=Column("diff", Text, nullable=False))
    reason: str | None = Field(default=None, sa_type=Text)
    request_id: str | None = None
    client_ip: str | None = None
    prev_hash: str
    hash: str
    # The public id of the session the change was made in (as on access rows).
    session_id: str | None = None


class AuditCheckpointRow(LezaModel, table=True):
    """The last link written to each chain (truncation is measured against it)."""

    __tablename__ = "leza_audit_checkpoint"

    chain: str = Field(primary_key=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str
    ts: int = Field(sa_column=Column(BigInteger, nullable=False))


class AuditPurgeRow(LezaModel, table=True):
    """Where a chain now starts after a purge: its last purged link, signed with
    the audit key so that nobody without it can cut a chain's head unnoticed."""

    __tablename__ = "leza_audit_purge"

    chain: str = Field(primary_key=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))  # last purged row
    hash: str  # that row's hash: the next row's prev_hash
    ts: int = Field(sa_column=Column(BigInteger, nullable=False))  # that row's time
    purged_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    sig: str


class AuditRedactionRow(LezaModel, table=True):
    """An audit row redacted by erasure (``leza forget``), vouched for with the audit key.

    ``hash`` is the row's chain hash (of its original content, still the next
    row's ``prev_hash``), ``redacted_hash`` the HMAC of its content as redacted;
    ``sig`` signs both with the row's place. ``verify()`` accepts a row whose
    content no longer matches ``hash`` only when such an entry matches it exactly.
    """

    __tablename__ = "leza_audit_redaction"

    id: str = Field(primary_key=True)  # the audit row's id
    chain: str
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str
    redacted_hash: str
    redacted_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    sig: str


class LogRow(LezaModel, table=True):
    """One record of the app's own logging (the LOG tab)."""

    __tablename__ = "leza_log"
    __table_args__: Any = (
        Index("ix_leza_log_ts_id", "ts", "id"),
        Index("ix_leza_log_action_ts", "action", "ts"),
        Index("ix_leza_log_performer_ts", "performer_id", "ts"),
        Index("ix_leza_log_request", "request_id"),
    )

    id: str = Field(primary_key=True)
    ts: int = Field(sa_column=Column(BigInteger, nullable=False))
    action: str  # the level name: "debug", "info", "warning", "error", "critical"
    level: int
    logger: str
    message: str = Field(sa_type=Text)
    exception: str | None = Field(default=None, sa_type=Text)
    request_id: str | None = None
    performer_id: str | None = None
    route: str | None = None
    origin: str = ""
    app: str


class AdvisoryRow(LezaModel, table=True):
    """A finding of an advisory rule (the ADVISORY tab)."""

    __tablename__ = "leza_advisory"
    __table_args__: Any = (
        Index("ix_leza_advisory_ts_id", "ts", "id"),
        Index("ix_leza_advisory_action_ts", "action", "ts"),
        Index("ix_leza_advisory_performer_ts", "performer_id", "ts"),
        Index("ix_leza_advisory_request", "request_id"),
        Index("ix_leza_advisory_session_ts", "session_id", "ts"),
    )

    id: str = Field(primary_key=True)
    ts: int = Field(sa_column=Column(BigInteger, nullable=False))
    action: str  # the rule's name
    severity: str
    message: str = Field(sa_type=Text)
    evidence: str = Field(sa_type=Text)  # JSON list of event ids
    performer_id: str | None = None
    ip: str | None = None
    details: str = Field(sa_type=Text)  # JSON object
    app: str
    # The request and session of the event that raised it (None: not a request).
    request_id: str | None = None
    session_id: str | None = None


class CheckRow(LezaModel, table=True):
    """One probe of an availability check and the state it left the check in."""

    __tablename__ = "leza_check"
    __table_args__: Any = (
        Index("ix_leza_check_ts_id", "ts", "id"),
        Index("ix_leza_check_name_ts", "check_name", "ts"),
        Index("ix_leza_check_action_ts", "action", "ts"),
    )

    id: str = Field(primary_key=True)
    ts: int = Field(sa_column=Column(BigInteger, nullable=False))
    action: str  # "probe", or "state_change" when the state moved
    check_name: str
    ok: bool
    state: str
    previous: str
    latency_ms: float | None = None
    error: str | None = Field(default=None, sa_type=Text)
    app: str


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


access_table = _table(AccessRow)
device_table = _table(DeviceRow)
geo_table = _table(GeoRow)
performer_table = _table(PerformerRow)
session_table = _table(SessionRow)
audit_table = _table(AuditRow)
audit_checkpoint_table = _table(AuditCheckpointRow)
audit_purge_table = _table(AuditPurgeRow)
audit_redaction_table = _table(AuditRedactionRow)
log_table = _table(LogRow)
advisory_table = _table(AdvisoryRow)
check_table = _table(CheckRow)


# --------------------------------------------------------------------------- traffic rollups

#: Histogram columns of the rollup tables, one per latency bucket:
#: ``h00`` counts durations <= 0.25 ms, … ``h28`` those over 60 s
#: (``state.traffic.LATENCY_BOUNDS_MS``).
TRAFFIC_HISTOGRAM = tuple(f"h{i:02d}" for i in range(29))
#: Every column of a rollup table, in the order of a rollup vector after the key.
TRAFFIC_COLUMNS = (
    "ts", "method", "route",
    "requests", "success", "client_errors", "server_errors", "denied",
    "logins", "login_failures", "duration_us", "last_seen",
    *TRAFFIC_HISTOGRAM,
)  # fmt: skip


def _traffic_table(name: str) -> Table:
    """One rollup table: a row per (bucket start, method label, route label).

    Counts are added to in place by the write path's upsert (``n = n +
    excluded.n``). Integer counts hold 2**31 - 1 requests per endpoint and
    bucket; sums of µs need BIGINT. SQLite stores the rows in primary-key order
    (WITHOUT ROWID): a window is one contiguous range of the table.
    """
    counts = [Column(c, Integer, nullable=False) for c in TRAFFIC_COLUMNS[3:10]]
    return Table(
        name,
        metadata,
        Column("ts", BigInteger, nullable=False),  # bucket start, µs since the epoch, UTC
        Column("method", String, nullable=False),  # a METHODS name or "OTHER"
        Column("route", Text, nullable=False),  # route template or "(unmatched)"
        *counts,
        Column("duration_us", BigInteger, nullable=False),  # sum of the durations
        Column("last_seen", BigInteger, nullable=False),  # newest request's start, µs
        *(Column(c, Integer, nullable=False) for c in TRAFFIC_HISTOGRAM),
        PrimaryKeyConstraint("ts", "method", "route", name=f"pk_{name}"),
        sqlite_with_rowid=False,
    )


#: Per-minute rollups, written with the events: windows up to a few hours, the
#: edges of longer ones, and the hours not summed into ``leza_traffic_hour`` yet.
traffic_minute_table = _traffic_table("leza_traffic_minute")
#: Per-hour rollups: the minutes of each past hour summed once
#: (``sql_rollups.settle``), read for the whole hours of long windows.
traffic_hour_table = _traffic_table("leza_traffic_hour")
traffic_tables = (traffic_minute_table, traffic_hour_table)
#: One row (``id`` 1): ``hours_until`` (µs, an hour boundary) is where the hour
#: table stops being complete. Hours before it are summed; a write adding to a
#: minute before it (a late replay) adds to its hour row too, in its transaction.
traffic_mark_table = Table(
    "leza_traffic_mark",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("hours_until", BigInteger, nullable=False),
)
