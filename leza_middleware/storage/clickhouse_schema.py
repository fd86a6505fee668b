"""The ClickHouse backend's tables and how events map to their rows.

One table per kind (``leza_access``, ``leza_log``, ``leza_advisory``), each a
``ReplacingMergeTree`` partitioned by the month of the event time and ordered
by ``(ts, id)``:

* the admin view reads a time range newest first, which is a range of that
  key read backwards, and purge drops whole months;
* the key ends with the event id, so background merges fold the copies of a
  replayed event into one row. Merges happen whenever the server likes, so
  reads never rely on them: every read keeps one row per id itself
  (``LIMIT 1 BY id``, ``DISTINCT id``) — a replayed batch is never counted twice.

Access events are stored whole, one row each: the device, network and
performer as JSON beside the scalar columns (a column store compresses the
repeats; no joins at read time).

The SQL is what Debian 12's server (18.16) and current releases both accept:
``Int64`` µs times (no ``DateTime64`` in 18.16), no ``LowCardinality`` (an
experimental type there), no data-skipping indexes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from ..events import AccessEvent, AdvisoryEvent, Device, Event, Geo, LogEvent
from ..performer import Performer

__all__ = [
    "KINDS",
    "MONTH",
    "ChKind",
    "access_blobs",
    "access_columns",
    "access_row_width",
    "create_distributed",
    "create_table",
]

#: The month of an event (UTC) from its µs time: the partition key.
MONTH = "toYYYYMM(toDateTime(intDiv(ts, 1000000), 'UTC'))"

_S, _N, _I64, _I32, _U8 = "String", "Nullable(String)", "Int64", "Int32", "UInt8"


@dataclass(frozen=True, slots=True)
class ChKind:
    """How one event kind maps to a table: its columns and their types (in
    row order), the rows of events and the events of rows."""

    table: str
    columns: tuple[tuple[str, str], ...]
    to_row: Callable[[Any], tuple[Any, ...]]
    from_row: Callable[[Sequence[Any], dict[Any, Any]], Event]
    #: The columns of a batch (``columnar=True`` inserts), when faster than
    #: transposing :attr:`to_row`'s rows.
    to_columns: Callable[[Sequence[Any]], list[Sequence[Any]]] | None = None
    performer_column: str = "performer_id"
    request_column: str | None = "request_id"
    session_column: str | None = None

    def columns_of(self, events: Sequence[Any]) -> list[Sequence[Any]]:
        """``events`` as columns, in :attr:`columns` order."""
        if self.to_columns is not None:
            return self.to_columns(events)
        return list(zip(*map(self.to_row, events), strict=True))

    @property
    def names(self) -> str:
        return ", ".join(name for name, _ in self.columns)


def create_table(table: str, kind: ChKind) -> str:
    """The DDL of ``kind``'s table (``table``: its qualified name)."""
    cols = ",\n    ".join(f"{name} {type_}" for name, type_ in kind.columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    {cols}\n)\n"
        f"ENGINE = ReplacingMergeTree()\nPARTITION BY {MONTH}\nORDER BY (ts, id)"
    )


def create_distributed(table: str, local: str, cluster: str, database: str, key: str) -> str:
    """A ``Distributed`` table over ``local`` on every shard of ``cluster``.
    Events go to a shard by a hash of their id (``key``), so the copies of a
    replayed event land on one shard, where the one-row-per-id rule folds them."""
    name = local.rsplit(".", 1)[-1]
    return (
        f"CREATE TABLE IF NOT EXISTS {table} AS {local} "
        f"ENGINE = Distributed({cluster}, `{database}`, {name}, {key})"
    )


# -- access: the row of AccessEvent, then the device, geo and performer as JSON

_ACCESS_COLUMNS = (
    ("id", _S), ("ts", _I64), ("action", _S), ("method", _S), ("endpoint", _S),
    ("route", _N), ("status", _I32), ("duration_us", _I64), ("outcome", _S), ("reason", _S),
    ("request_id", _S), ("client_ip", _S), ("ip_valid", _U8), ("peer_ip", _S),
    ("proxy_chain", _S), ("scheme", _S), ("host", _S), ("app", _S), ("device_key", _N),
    ("geo_key", _N), ("performer_id", _N), ("performer_key", _N), ("machine_id", _N),
    ("session_hash", _N), ("headers", _N),
    ("device", _N), ("geo", _N), ("performer", _N),
)  # fmt: skip
_N_ROW = 25  # the columns of AccessEvent.row


def _dataclass_json(value: Device | Geo) -> str:
    # Field values in declaration order: Device(*values) / Geo(*values) again.
    return json.dumps(dataclasses.astuple(value), ensure_ascii=False)


class _JsonOf:
    """The JSON of immutable values shared by many events (a device, network
    or performer is one object across thousands of events), encoded once per
    object: encoding it for every row cost ~20 µs of the ~25 µs a row took.

    Keyed by identity, holding the object, so an id is never reused while its
    entry lives; bounded (cleared when full), thread-safe under the GIL (a
    race encodes twice, never wrongly)."""

    __slots__ = ("_encode", "_seen")
    _SIZE = 4096

    def __init__(self, encode: Callable[[Any], str]) -> None:
        self._encode = encode
        self._seen: dict[int, tuple[Any, str]] = {}

    def __call__(self, value: Any) -> str | None:
        if value is None:
            return None
        hit = self._seen.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        text = self._encode(value)
        if len(self._seen) >= self._SIZE:
            self._seen.clear()
        self._seen[id(value)] = (value, text)
        return text


_device_json = _JsonOf(_dataclass_json)
_geo_json = _JsonOf(_dataclass_json)
_performer_json = _JsonOf(Performer.to_json)


def _access_row(e: AccessEvent) -> tuple[Any, ...]:
    row = e.row
    if len(row) < _N_ROW:  # an event built before ``headers`` existed
        row = (*row, *(None,) * (_N_ROW - len(row)))
    return (
        *row[:12], int(bool(row[12])), *row[13:_N_ROW],
        _device_json(e.device), _geo_json(e.geo), _performer_json(e.performer),
    )  # fmt: skip


def _access_columns(events: Sequence[AccessEvent]) -> list[Sequence[Any]]:
    # The stored rows' columns picked in C (itemgetter): no tuple per row for
    # the driver to transpose in Python, and few allocations (zip(*rows)
    # makes an iterator per row, enough to set off full garbage collections).
    rows = [e.row for e in events]
    if any(len(r) != _N_ROW for r in rows):  # events built before ``headers`` existed
        rows = [_access_row(e)[:_N_ROW] for e in events]
    cols: list[Sequence[Any]] = [list(map(itemgetter(i), rows)) for i in range(_N_ROW)]
    cols[12] = [1 if v else 0 for v in cols[12]]  # ip_valid: UInt8
    cols.append([_device_json(e.device) for e in events])
    cols.append([_geo_json(e.geo) for e in events])
    cols.append([_performer_json(e.performer) for e in events])
    return cols


def access_columns() -> tuple[tuple[str, str], ...]:
    """The access table's columns (name, type), in row order."""
    return _ACCESS_COLUMNS


def access_row_width() -> int:
    """How many of :func:`access_columns` are :attr:`AccessEvent.row`'s; the
    device, geo and performer JSON follow."""
    return _N_ROW


def access_blobs(
    performer_json: Callable[[Any], str],
) -> tuple[tuple[str, Callable[[Any], str]], ...]:
    """The attributes of an access event stored as JSON after its row, with
    their encoders (the same text as :func:`_access_columns` writes)."""
    return (("device", _dataclass_json), ("geo", _dataclass_json), ("performer", performer_json))


def _cached(cache: dict[Any, Any], tag: str, text: str | None, build: Callable[[Any], Any]) -> Any:
    if text is None:
        return None
    found = cache.get((tag, text))
    if found is None:
        found = cache[tag, text] = build(json.loads(text))
    return found


def _access_from_row(r: Sequence[Any], cache: dict[Any, Any]) -> AccessEvent:
    row = (*r[:12], bool(r[12]), *r[13:_N_ROW])
    return AccessEvent(
        row,
        _cached(cache, "d", r[_N_ROW], lambda v: Device(*v)),
        _cached(cache, "g", r[_N_ROW + 1], lambda v: Geo(*v)),
        _cached(cache, "p", r[_N_ROW + 2], Performer.from_dict),
    )


# -- log

_LOG_COLUMNS = (
    ("id", _S), ("ts", _I64), ("action", _S), ("level", _I32), ("logger", _S), ("message", _S),
    ("exception", _N), ("request_id", _N), ("performer_id", _N), ("route", _N),
    ("origin", _S), ("app", _S),
)  # fmt: skip


def _log_row(e: LogEvent) -> tuple[Any, ...]:
    return (e.id, e.ts, e.action, e.level, e.logger, e.message, e.exception, e.request_id,
            e.performer_id, e.route, e.origin, e.app)  # fmt: skip


def _log_from_row(r: Sequence[Any], cache: dict[Any, Any]) -> LogEvent:
    return LogEvent(id=r[0], ts=r[1], level=r[3], logger=r[4], message=r[5], exception=r[6],
                    request_id=r[7], performer_id=r[8], route=r[9], origin=r[10],
                    app=r[11])  # fmt: skip


# -- advisory: evidence and details as JSON

_ADVISORY_COLUMNS = (
    ("id", _S), ("ts", _I64), ("action", _S), ("severity", _S), ("message", _S),
    ("evidence", _S), ("performer_id", _N), ("ip", _N), ("details", _S), ("app", _S),
    ("request_id", _N), ("session_id", _N),
)  # fmt: skip


def _advisory_row(e: AdvisoryEvent) -> tuple[Any, ...]:
    return (e.id, e.ts, e.rule, e.severity, e.message,
            json.dumps(list(e.evidence), ensure_ascii=False), e.performer_id, e.ip,
            json.dumps(e.details, ensure_ascii=False, default=str), e.app, e.request_id,
            e.session_id)  # fmt: skip


def _advisory_from_row(r: Sequence[Any], cache: dict[Any, Any]) -> AdvisoryEvent:
    return AdvisoryEvent(id=r[0], ts=r[1], rule=r[2], severity=r[3], message=r[4],
                         evidence=json.loads(r[5]), performer_id=r[6], ip=r[7],
                         details=json.loads(r[8]), app=r[9], request_id=r[10],
                         session_id=r[11])  # fmt: skip


#: The kinds this backend stores. Audit rows, sessions and checks are small,
#: transactional and updated in place: they belong in a SQL database.
KINDS: dict[str, ChKind] = {
    "access": ChKind(
        "leza_access", _ACCESS_COLUMNS, _access_row, _access_from_row, _access_columns,
        session_column="session_hash",
    ),
    "log": ChKind("leza_log", _LOG_COLUMNS, _log_row, _log_from_row),
    "advisory": ChKind(
        "leza_advisory", _ADVISORY_COLUMNS, _advisory_row, _advisory_from_row,
        session_column="session_id",
    ),
}  # fmt: skip
