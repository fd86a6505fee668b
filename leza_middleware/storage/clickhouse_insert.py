"""The ClickHouse backend's INSERTs: access batches sent as ready Native blocks.

clickhouse-driver keeps the connection, the query, the server's answers and
its errors; only the block's bytes are made here (:mod:`.clickhouse_native`),
by a subclass of the driver's ``Client`` that overrides its ``send_data``.
That step is where the driver spent most of an event's client time.

The ready block is sent only when it is exactly what the server asked for:
the server's sample block names the same columns with the same types, and
the connection is uncompressed. Otherwise (a table altered by hand, a
compressed connection, a driver without these hooks, a value the encoder
does not take) the driver builds the block from the events' columns as
before, with its own checks and errors. A driver that calls the override
with the block and not through it gets a value it refuses (the block is not
a list of columns), never an empty INSERT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

from ..performer import Performer
from .clickhouse_native import AccessEncoder, NativeBlock
from .clickhouse_schema import ChKind, access_blobs, access_columns, access_row_width

__all__ = ["insert"]


class _Ready(tuple[Any, ...]):
    """An INSERT's data for the driver: the ready block, and how to build the
    driver's columns instead. A tuple, so the driver takes it for INSERT data."""

    block: NativeBlock
    columns: Callable[[], list[Sequence[Any]]]

    def __new__(cls, block: NativeBlock, columns: Callable[[], list[Sequence[Any]]]) -> _Ready:
        ready = super().__new__(cls, (block,))
        ready.block = block
        ready.columns = columns
        return ready


@cache
def _access_encoder() -> AccessEncoder:
    return AccessEncoder(access_columns(), access_row_width(), access_blobs(Performer.to_json))


_CLASSES: dict[type, type | None] = {}


def _client_class(base: type) -> type | None:
    """:func:`_native_class` of ``base``, made once."""
    if base not in _CLASSES:
        _CLASSES[base] = _native_class(base)
    return _CLASSES[base]


def _native_class(base: type) -> type | None:
    """The driver's ``Client`` with ``send_data`` sending ready blocks; None
    when this driver lacks what it needs (then the driver's own path is used)."""
    try:
        from clickhouse_driver import defines
        from clickhouse_driver.block import ColumnOrientedBlock
    except ImportError:
        return None
    custom_from = getattr(defines, "DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION", 54454)
    needed = ("send_data", "process_insert_query", "receive_sample_block")
    if not all(callable(getattr(base, name, None)) for name in needed):
        return None

    class NativeInsertClient(base):  # type: ignore[misc]
        def send_data(
            self, sample_block: Any, data: Any, types_check: bool = False, columnar: bool = False
        ) -> Any:
            if not isinstance(data, _Ready):
                return super().send_data(sample_block, data, types_check, columnar)
            conn = self.connection
            wanted = [tuple(c) for c in getattr(sample_block, "columns_with_types", ())]
            if conn.compression or wanted != list(data.block.columns):
                return super().send_data(sample_block, data.columns(), types_check, True)
            revision = conn.server_info.used_revision
            send(conn, data.block.frames(revision >= custom_from))
            profile = getattr(self, "receive_profile_events", None)
            if profile is not None:
                profile()
            conn.send_data(ColumnOrientedBlock())  # an empty block ends the data
            if profile is not None:
                profile()
            return data.block.rows

    return NativeInsertClient


#: Pieces at least this big go to the socket as they are; smaller ones are
#: gathered first (a send per small piece would cost more than the copy).
_DIRECT = 1 << 16


def send(conn: Any, frames: Iterable[bytes]) -> None:
    """``frames`` to the connection's socket with as few copies as can be:
    big ones straight (after the driver's buffer, holding what it wrote
    before, is flushed), small ones gathered into sends of ~64 KiB."""
    conn.fout.flush()
    sock = conn.socket
    group: list[bytes] = []
    size = 0
    for frame in frames:
        if len(frame) >= _DIRECT:
            if group:
                sock.sendall(b"".join(group))
                group, size = [], 0
            sock.sendall(frame)
            continue
        group.append(frame)
        size += len(frame)
        if size >= _DIRECT:
            sock.sendall(b"".join(group))
            group, size = [], 0
    if group:
        sock.sendall(b"".join(group))


def _adopt(client: Any) -> bool:
    """Whether ``client`` now sends ready blocks (its class swapped for the
    subclass above; the instance and its connection are unchanged)."""
    if getattr(client, "_leza_native", False):
        return True
    cls = _client_class(type(client))
    if cls is None:
        return False
    client.__class__ = cls
    client._leza_native = True
    return True


def insert(client: Any, spec: ChKind, table: str, events: Sequence[Any], settings: Any) -> None:
    """INSERT ``events`` (all of ``spec``'s kind) into ``table`` through ``client``."""
    query = f"INSERT INTO {table} ({spec.names}) VALUES"
    block: NativeBlock | None = None
    if spec.table == "leza_access" and events:
        try:
            block = _access_encoder().encode(events)
        except Exception:  # NotEncodable, or anything it chokes on: the driver decides
            block = None
    if block is not None and _adopt(client):
        client.execute(query, _Ready(block, lambda: spec.columns_of(events)), settings=settings)
        return
    client.execute(query, spec.columns_of(events), columnar=True, settings=settings)
