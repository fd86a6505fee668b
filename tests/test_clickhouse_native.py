"""Access batches sent as ready Native blocks (storage/clickhouse_native.py,
clickhouse_insert.py): byte for byte what clickhouse-driver itself sends, on
ordinary, hostile and mixed batches (no server needed); on real servers, the
same rows as the driver's INSERT, and the driver's own path whenever the ready
block does not fit (events of an older shape, values it does not take, a table
whose columns differ).
"""

from __future__ import annotations

import random
import socket
import threading
from typing import Any

import pytest
from test_storage import ALICE, BOB, BOT, CHROME, FRANKFURT, NOWHERE, ev
from test_storage_clickhouse import LONG, WEIRD, hostile_access

from leza_middleware.events import AccessEvent, Device, ua_key
from leza_middleware.storage import QueryFilter
from leza_middleware.storage import clickhouse_native as native
from leza_middleware.storage.clickhouse import ClickHouseStorage
from leza_middleware.storage.clickhouse_insert import _access_encoder, insert
from leza_middleware.storage.clickhouse_schema import KINDS

pytest.importorskip("clickhouse_driver", reason="the [clickhouse] extra is not installed")

ACCESS = KINDS["access"]


def mixed(n: int, seed: int = 7) -> list[AccessEvent]:
    """``n`` events crossing several encoder chunks: shared and missing devices,
    networks and performers, nulls among values, lengths from 0 to past 127
    bytes, ASCII and not, and a bool-ish ip_valid."""
    rng = random.Random(seed)
    devices = [CHROME, BOT, None, Device(key=ua_key("ü"), user_agent="ü" * 200)]
    geos = [FRANKFURT, NOWHERE, None]
    performers = [ALICE, BOB, None]
    out = []
    for i in range(n):
        out.append(ev(
            i,
            id=f"mixed-{i:06d}",
            device=rng.choice(devices),
            geo=rng.choice(geos),
            performer=rng.choice(performers),
            endpoint=rng.choice(["/", "/a?b=c", "/" + "x" * rng.randint(100, 300), "/ünï/😀"]),
            route=rng.choice([None, "/api/items/{id}", "/r/" + WEIRD]),
            machine_id=rng.choice([None, f"m-{i}", ""]),
            session_hash=None if i % 7 else f"s-{i}",
            client_ip=rng.choice(["161.35.214.167", "::1", "not an ip", ""]),
            ip_valid=rng.choice([True, False]),
            duration_us=rng.choice([0, -1, 2**63 - 1, -(2**63)]),
            status=rng.choice([200, 2**31 - 1, -(2**31)]),
            headers=None if i % 3 else {"x-a": f"{i}"},
        ))  # fmt: skip
    return out


def driver_bytes(events: list[AccessEvent], revision: int) -> bytes:
    """The driver's own serialisation of the events' columns (its block
    stream, as its connection sends it), captured from a socket pair."""
    from clickhouse_driver.block import ColumnOrientedBlock
    from clickhouse_driver.bufferedwriter import BufferedSocketWriter
    from clickhouse_driver.context import Context
    from clickhouse_driver.streams.native import BlockOutputStream

    class ServerInfo:
        used_revision = revision

    ctx = Context()
    ctx.server_info = ServerInfo()
    ctx.client_settings = {
        "strings_as_bytes": False,
        "strings_encoding": "utf-8",
        "use_numpy": False,
        "input_format_null_as_default": False,
    }
    ctx.settings = {}
    a, b = socket.socketpair()
    got: list[bytes] = []

    def drain() -> None:
        while chunk := b.recv(1 << 20):
            got.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        out = BlockOutputStream(BufferedSocketWriter(a, 1 << 20), ctx)
        block = ColumnOrientedBlock(
            list(ACCESS.columns), [list(c) for c in ACCESS.columns_of(events)]
        )
        out.write(block)
    finally:
        a.close()
        reader.join(10)
        b.close()
    return b"".join(got)


@pytest.mark.parametrize("revision", [54413, 54460])  # 18.16's; one that flags each column
@pytest.mark.parametrize(
    "events",
    [
        pytest.param(lambda: mixed(3000), id="mixed, 3 chunks"),
        pytest.param(hostile_access, id="hostile"),
        pytest.param(lambda: [ev(1)], id="one"),
        pytest.param(lambda: [ev(i, device=None, geo=None) for i in range(2000)], id="all null"),
    ],
)
def test_the_block_is_byte_for_byte_the_drivers(events: Any, revision: int) -> None:
    batch = events()
    packet = _access_encoder().encode(batch).packet(revision >= 54454)
    assert packet[:2] == b"\x02\x00"  # Data, no temporary table name
    assert packet[2:] == driver_bytes(batch, revision)


def test_varints_and_strings_of_every_length() -> None:
    for n in (0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**40):
        value, shift, expected = 0, 0, n
        for byte in native.varint(n):
            value |= (byte & 0x7F) << shift
            shift += 7
        assert value == expected
    assert native._varints()[300] == native.varint(300)
    lengths = ["", "a", "é" * 63, "é" * 64, "x" * 127, "x" * 128, "x" * 16383, "x" * 16384, LONG]
    for nullable in (False, True):
        values = [*lengths, *(None,) * nullable]
        expected = b"".join(native.binary_str(v or "") for v in values)
        assert native._strings(values, nullable) == expected
        assert native._strings([v or "" for v in values][:1] * 5, nullable) == expected[:1] * 5


def test_values_it_does_not_take_are_left_to_the_driver() -> None:
    encoder = _access_encoder()
    for bad in (
        ev(1, status="200"),  # a str where an Int32 goes
        ev(1, duration_us=2**63),  # out of Int64's range
        ev(1, endpoint="/\ud800"),  # a lone surrogate: no UTF-8 for it
        ev(1, host=None),  # None in a column that is not Nullable
        AccessEvent(ev(1).row[:24], CHROME, FRANKFURT, None),  # built before ``headers``
    ):
        with pytest.raises(native.NotEncodable):
            encoder.encode([ev(0), bad])


def test_kept_encodings_are_bounded_and_never_stale() -> None:
    kept = native._Kept(nullable=True)
    for i in range(native._KEEP * 2 + 5):
        assert kept[f"v{i}"] == native.binary_str(f"v{i}")
        assert len(kept) <= native._KEEP
    assert kept[None] == b"\x00"
    # By identity, holding the object: a new object never gets a dead one's JSON,
    # however many come and go (ids of dead objects are reused by CPython).
    blobs = native._Blobs(lambda d: d.user_agent)
    for i in range(native._KEEP * 2 + 5):
        device = Device(key=str(i), user_agent=f"ua {i}")
        nulls, data = blobs.column([device, None])
        assert nulls == b"\x00\x01"
        assert data == native.binary_str(f"ua {i}") + b"\x00"
        del device


# ---------------------------------------------------------------------------- on real servers


def stored(storage: ClickHouseStorage) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in storage.execute(
            f"SELECT {ACCESS.names} FROM {storage.table(ACCESS.table)} ORDER BY id, ts"
        )
    ]


def driver_insert(storage: ClickHouseStorage, events: list[AccessEvent]) -> None:
    with storage._client() as client:
        client.execute(
            f"INSERT INTO {storage.table(ACCESS.table)} ({ACCESS.names}) VALUES",
            ACCESS.columns_of(events),
            columnar=True,
            settings={"insert_distributed_sync": 1} if storage.sharded else None,
        )


def failure(call: Any) -> Exception:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def truncate(storage: ClickHouseStorage) -> None:
    for shard in storage.shards():
        storage.execute(f"TRUNCATE TABLE {storage.local(ACCESS.table)}", shard=shard)


@pytest.fixture
def both(ch_any: ClickHouseStorage) -> ClickHouseStorage:
    ch_any.setup()
    return ch_any


def test_the_server_stores_the_same_rows_as_from_the_driver(both: ClickHouseStorage) -> None:
    batch = [*mixed(2500), *hostile_access()]
    both.write(batch)
    with both._client() as client:
        assert type(client).__name__ == "NativeInsertClient"  # the ready block was sent
    ours = stored(both)
    truncate(both)
    driver_insert(both, batch)
    assert ours == stored(both)
    assert len(ours) == len(batch)
    page = both.query("access", QueryFilter(limit=5000))
    assert sorted(e.to_dict()["_id"] for e in page.events) == sorted(e.id for e in batch)


def test_events_of_an_older_shape_go_through_the_driver(
    clickhouse_storage: ClickHouseStorage,
) -> None:
    old = AccessEvent(ev(1).row[:24], CHROME, FRANKFURT, ALICE)  # no ``headers``
    clickhouse_storage.write([ev(0), old])
    page = clickhouse_storage.query("access", QueryFilter(limit=10))
    assert [e.id for e in page.events] == ["e000001", "e000000"]
    assert page.events[0].headers_text is None
    assert page.events[0].performer == ALICE


def test_values_it_does_not_take_fail_as_the_drivers_do(
    clickhouse_storage: ClickHouseStorage,
) -> None:
    bad = [ev(0), ev(1, status="200")]
    clickhouse_storage.setup()
    ours = failure(lambda: clickhouse_storage.write(bad))
    drivers = failure(lambda: driver_insert(clickhouse_storage, bad))
    assert type(ours) is type(drivers)
    assert str(ours) == str(drivers)
    assert stored(clickhouse_storage) == []


def test_a_table_with_other_column_types_gets_the_drivers_block(
    clickhouse_storage: ClickHouseStorage,
) -> None:
    """The server's sample block differs from the ready one (here a column
    widened by hand): the driver builds the block, and converts."""
    clickhouse_storage.setup()
    table = clickhouse_storage.table(ACCESS.table)
    clickhouse_storage.execute(f"ALTER TABLE {table} MODIFY COLUMN status Int64")
    batch = mixed(1500)
    with clickhouse_storage._client() as client:
        insert(client, ACCESS, table, batch, None)
        assert type(client).__name__ == "NativeInsertClient"
    rows = stored(clickhouse_storage)
    assert len(rows) == len(batch)
    assert sorted(r[6] for r in rows) == sorted(e.status for e in batch)
