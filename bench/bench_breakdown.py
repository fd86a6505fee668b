"""CPU µs per access event of each step on the recorder thread, leza vs the floor.

    python bench/bench_breakdown.py [-n 50000] [--rounds 3] [--prefill 50000]
    BENCH_SRC=/tmp/main python bench/bench_breakdown.py   # another tree's package

Steady traffic as bench_throughput.py sends it (``GET /``, ~300 real rotating
User-Agents, ~500 client IPs in X-Forwarded-For from a trusted proxy, no
cookies: a new machine id per request, no session), GeoIP on with the bundled
GeoLite2 of maxminddb-geolite2, sessions, machine ids, advisories and the
STATE rollups as configured by default. The raw records are made by the real
ASGI middleware in process (its ``offer`` captured), then fed to the real
recorder's steps in this thread, batch by batch, after a warm-up that fills
the caches and writes the dimension rows once (steady state).

Per step, ``time.thread_time()`` summed over the batches, per event:

leza
  dequeue / batching   ``Recorder._take``: the queue's ``popleft`` per record
  enrichment           ``Pipeline.prepare_batch``: raw tuple -> AccessEvent
  derive               ``Pipeline.derive``: sessions, advisory rules
  recorder books       the rest of ``Recorder._process`` around them
                       (listeners, counts, retry loop), with storage writes
                       timed separately
  build rows           ``KINDS['access'].to_rows`` (rows + new dimension refs)
  rollups increments   ``Aggregator.increments``
  INSERT leza_access   one ``executemany`` (the table with all its indexes)
  dimension rows       device / geo / performer rows seen the first time
  rollup upserts       ``SQLRollups.write``
  commit               the transaction's COMMIT (WAL)

The SQL write is split by replaying ``SQLWriter.write``'s steps here with a
timer around each (storage/sql_write.py is not changed for this); the sum of
those parts is printed beside ``SQLStorage.write`` timed whole on the same
batches in a second storage, so drift between the replica and the real write
shows.

Index upkeep of ``leza_access``, on scratch SQLite files with the same pragmas
and the same INSERT statement, prefilled with ``--prefill`` rows then written
the measured rows in the same batches, each with its COMMIT: all indexes; the
primary key only; no key at all; and all but one index, for each index (that
index's share is the difference with "all").

floor (bench/floor_middleware.py's writer thread, the same traffic)
  dequeue / batching   ``popleft`` per record
  lookups + rows       per record: UA bytes -> device id, last XFF hop -> geo id
                       through dicts, one narrow row tuple
  INSERT floor_access  one ``executemany`` of 8 columns, no index
  dimension rows       new devices / places (none in steady state)
  commit

Prints a table per round and the medians; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# BENCH_SRC: another tree's leza_middleware (e.g. ``git archive main leza_middleware``
# unpacked somewhere) to measure it with this bench, side by side with this one.
sys.path.insert(0, os.environ.get("BENCH_SRC") or str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_throughput import geoip_db, real_ips, real_uas  # noqa: E402
from floor_middleware import INSERT_ACCESS, Floor  # noqa: E402

from leza_middleware import Leza, LezaMiddleware  # noqa: E402
from leza_middleware.storage import SQLStorage  # noqa: E402
from leza_middleware.storage.models import access_table  # noqa: E402
from leza_middleware.storage.sql_codecs import KINDS, Refs, sessions_to_rows  # noqa: E402
from leza_middleware.storage.sql_url import set_sqlite_pragmas  # noqa: E402

LEZA_STEPS = (
    "dequeue / batching",
    "enrichment",
    "derive (sessions, advisories)",
    "recorder books, listeners",
    "build rows",
    "rollups increments",
    "INSERT leza_access (all indexes)",
    "dimension rows",
    "session upserts",
    "rollup upserts",
    "commit",
)
FLOOR_STEPS = {
    "dequeue / batching": "dequeue / batching",
    "enrichment": "lookups + rows",
    "INSERT leza_access (all indexes)": "INSERT floor_access",
    "dimension rows": "dimension rows",
    "commit": "commit",
}


class Timer:
    """Thread CPU seconds per step name, summed."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.total[step] += time.thread_time() - t0


# -- traffic -------------------------------------------------------------------


def make_raws(leza: Leza, n: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """``n`` raw access records made by the real ASGI middleware for bench_throughput's
    traffic, and the floor's records for the same requests."""
    uas = [u.encode() for u in real_uas(300)]
    ips = [i.encode() for i in real_ips(500)]

    async def hello(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"Hello, world!"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    raws: list[tuple[Any, ...]] = []
    floor: list[tuple[Any, ...]] = []
    app = LezaMiddleware(hello, leza=leza)
    app.core.offer = raws.append  # type: ignore[method-assign]

    def scope(i: int) -> dict[str, Any]:
        headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", uas[i % len(uas)]),
                   (b"accept", b"*/*"), (b"x-forwarded-for", ips[i % len(ips)])]  # fmt: skip
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
                "query_string": b"", "root_path": "", "headers": headers,
                "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}  # fmt: skip

    async def run() -> None:
        for i in range(n):
            s = scope(i)
            t = time.time_ns()
            await app(s, receive, send)
            floor.append((t, time.time_ns() - t, "GET", "/", 200, dict(s["headers"])))

    asyncio.run(run())
    assert len(raws) == n, len(raws)
    return raws, floor


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[k : k + size] for k in range(0, len(items), size)]


# -- leza ------------------------------------------------------------------------


def bench_leza(tmp: Path, name: str, batch: int, **extra: Any) -> Leza:
    """A Leza on a SQLite file of its own in ``tmp``, as the throughput bench
    configures it, that writes only when asked (no timed flushes)."""
    return Leza(
        storage=f"sqlite:///{tmp / (name + '.db')}",
        trusted_proxies=["127.0.0.1"],
        geoip_db=geoip_db(),
        spill_dir=str(tmp / f"spill-{name}"),
        secret_key="bench-secret-key-0123456789abcdef",
        flush_interval=3600,
        batch_size=batch,
        **extra,
    )


def leza_round(
    tmp: Path, raws: list[tuple[Any, ...]], warm: list[tuple[Any, ...]], batch: int
) -> tuple[dict[str, float], float, list[list[tuple[Any, ...]]]]:
    """Per-step CPU seconds of the recorder's path for ``raws``, and the SQL write of
    the same events timed whole (in another storage); also the access rows."""
    leza = bench_leza(tmp, "leza", batch, queue_size=len(raws) + len(warm) + 1)
    leza._build()
    rec, storage = leza.recorder, leza.storage
    assert isinstance(storage, SQLStorage)
    storage.setup()
    writer = storage._writer
    timer = Timer()
    rows_out: list[list[tuple[Any, ...]]] = []

    def split_write(events: Sequence[Any]) -> None:
        """SQLWriter.write's steps (storage/sql_write.py), each timed."""
        with timer("build rows"):
            access = [e for e in events if e.kind == "access"]
            changes = [e for e in events if e.kind == "session"]
            other = [e for e in events if e.kind not in ("access", "session")]
            refs = Refs()
            known = writer.known
            rows = KINDS["access"].to_rows(access, refs, known)
            others = [(e.kind, KINDS[e.kind].to_rows([e], refs, known)) for e in other]
            session_rows = sessions_to_rows(changes, refs, known) if changes else []
        with writer.lock:
            raw = writer.raw
            if raw is None:
                raw = writer.raw = writer.engine.raw_connection()
            cur = raw.cursor()
            if refs:
                with timer("dimension rows"):
                    writer._write_refs(cur, refs)
            for kind, krows in others:
                with timer("derived events' rows"):
                    writer._insert_rows(cur, kind, krows)
            with timer("INSERT leza_access (all indexes)"):
                inserted = writer._insert_rows(cur, "access", rows)
            assert inserted == len(rows), (inserted, len(rows))
            with timer("rollups increments"):
                increments = writer.aggregator.increments(rows)
            with timer("rollup upserts"):
                writer.rollups.write(cur, increments)
            if session_rows:
                with timer("session upserts"):
                    cur.executemany(writer._upsert_session, session_rows)
            cur.close()
            with timer("commit"):
                raw.commit()
            known.remember(refs)
        rows_out.append(rows)

    # The recorder's own steps, in this thread (its worker is never started).
    real_prepare, real_derive = rec._prepare_batch, rec._derive
    assert real_prepare is not None

    def prepare(items: list[Any]) -> list[Any]:
        with timer("enrichment"):
            return real_prepare(items)

    def derive(events: list[Any]) -> list[Any]:
        with timer("derive (sessions, advisories)"):
            return real_derive(events) if real_derive is not None else []

    def run(records: list[tuple[Any, ...]], timed: bool) -> float:
        rec._prepare_batch = prepare
        rec._derive = derive
        storage.write = split_write  # type: ignore[method-assign]
        rec._queue.extend(records)
        rec._setup_done = True
        t_all = 0.0
        while rec._queue:
            t0 = time.thread_time()
            with timer("dequeue / batching"):
                taken = rec._take()
            rec._process(taken)
            t_all += time.thread_time() - t0
        assert not rec._inflight
        assert rec.storage_errors == 0
        return t_all

    run(warm, timed=False)  # caches, dimension rows, rollup rows of this minute
    timer.total.clear()
    rows_out.clear()
    gc.collect()
    t_all = run(raws, timed=True)
    steps = dict(timer.total)
    timed = sum(steps.values())
    steps["recorder books, listeners"] = t_all - timed
    stats = rec.stats()
    leza.shutdown(5)

    # The same path with the real SQLStorage.write, whole (a fresh file).
    whole = bench_leza(tmp, "whole", batch)
    whole._build()
    ws = whole.storage
    ws.setup()
    prep = whole.pipeline.prepare_batch
    der = whole.pipeline.derive
    for part in batches(warm, batch):
        events = prep(list(part))
        ws.write([*events, *der(events)])
    gc.collect()
    write_whole = 0.0
    for part in batches(raws, batch):
        events = prep(list(part))
        out = [*events, *der(events)]
        t0 = time.thread_time()
        ws.write(out)
        write_whole += time.thread_time() - t0
    whole.shutdown(5)
    assert stats["written"] >= len(raws), stats
    return steps, write_whole, rows_out


# -- index upkeep on scratch tables ------------------------------------------------


def _ddl(drop: set[str], key: bool = True) -> list[str]:
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = sqlite.dialect()
    table = str(CreateTable(access_table).compile(dialect=dialect))
    if not key:
        table = table.replace("PRIMARY KEY (id)", "CHECK (1)")
    out = [table]
    out += [
        str(CreateIndex(ix).compile(dialect=dialect))
        for ix in sorted(access_table.indexes, key=lambda ix: str(ix.name))
        if ix.name not in drop
    ]
    return out


def index_costs(
    tmp: Path,
    rows: list[list[tuple[Any, ...]]],
    prefill: list[tuple[Any, ...]],
    sql: str,
    repeats: int = 3,
) -> dict[str, float]:
    """CPU seconds to insert ``rows`` (batches, each committed) per table variant:
    the median of ``repeats`` runs, the variants interleaved."""
    names = sorted(str(ix.name) for ix in access_table.indexes)
    variants: dict[str, tuple[set[str], bool]] = {
        "all indexes": (set(), True),
        "primary key only": (set(names), True),
        "no key, no index": (set(names), False),
    }
    variants.update({f"all but {name}": ({name}, True) for name in names})
    variants.update({f"key + {name}": (set(names) - {name}, True) for name in names})
    runs: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        for label, (drop, key) in variants.items():
            path = tmp / "scratch.db"
            conn = sqlite3.connect(path, isolation_level=None)
            set_sqlite_pragmas(conn, 5000)
            for stmt in _ddl(drop, key):
                conn.execute(stmt)
            conn.execute("BEGIN")
            conn.executemany(sql, prefill)
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every variant starts alike
            gc.collect()
            t0 = time.thread_time()
            for part in rows:
                conn.execute("BEGIN")
                conn.executemany(sql, part)
                conn.execute("COMMIT")
            runs[label].append(time.thread_time() - t0)
            conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {label: statistics.median(times) for label, times in runs.items()}


def prefill_rows(template: list[list[tuple[Any, ...]]], n: int) -> list[tuple[Any, ...]]:
    """``n`` rows like the measured ones, ids and times before them."""
    flat = [r for part in template for r in part]
    first = flat[0][1]
    out = []
    for i in range(n):
        r = flat[i % len(flat)]
        ts = first - (n - i) * 200
        out.append((f"{ts:013x}prefill{i:08x}", ts, *r[2:]))
    return out


# -- floor -------------------------------------------------------------------------


def floor_round(tmp: Path, records: list[tuple[Any, ...]], warm: list[tuple[Any, ...]],
                batch: int) -> dict[str, float]:  # fmt: skip
    """Floor._write's steps, each timed (bench/floor_middleware.py)."""
    db = tmp / "floor.db"
    floor = Floor(None, str(db), geoip_db())
    floor.stop()  # its thread opened the file and made the tables; this one writes
    from ua_parser import parse

    floor.parse = parse
    import maxminddb

    floor.reader = maxminddb.open_database(geoip_db())
    con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    con.execute("pragma journal_mode=wal")
    con.execute("pragma synchronous=normal")
    timer = Timer()

    def write(part: Sequence[tuple[Any, ...]], queue: deque[tuple[Any, ...]]) -> None:
        queue.extend(part)
        with timer("dequeue / batching"):
            taken = [queue.popleft() for _ in range(len(queue))]
        with timer("lookups + rows"):
            new_devices, new_geos, rows = floor.rows(taken)
        con.execute("begin")
        with timer("dimension rows"):
            floor.store_dimensions(con, new_devices, new_geos)
        with timer("INSERT floor_access"):
            con.executemany(INSERT_ACCESS, rows)
        with timer("commit"):
            con.execute("commit")

    queue: deque[tuple[Any, ...]] = deque()
    for part in batches(warm, batch):
        write(part, queue)
    timer.total.clear()
    gc.collect()
    for part in batches(records, batch):
        write(part, queue)
    (count,) = con.execute("select count(*) from floor_access").fetchone()
    assert count == len(records) + len(warm), count
    con.close()
    return dict(timer.total)


# -- report ----------------------------------------------------------------------


def table(leza: dict[str, float], floor: dict[str, float], whole: float, n: int) -> str:
    us: Callable[[float], str] = lambda s: f"{s / n * 1e6:7.2f}"  # noqa: E731
    lines = [f"{'step':<44} {'leza µs':>8} {'floor µs':>9}"]
    names = list(LEZA_STEPS) + [k for k in leza if k not in LEZA_STEPS]
    for name in names:
        f = FLOOR_STEPS.get(name)
        fv = us(floor.get(f, 0.0)) if f else "      -"
        lines.append(f"{name:<44} {us(leza.get(name, 0.0)):>8} {fv:>9}")
    lines.append(f"{'total':<44} {us(sum(leza.values())):>8} {us(sum(floor.values())):>9}")
    sql_parts = sum(
        leza.get(k, 0.0)
        for k in ("build rows", "rollups increments", "INSERT leza_access (all indexes)",
                  "dimension rows", "session upserts", "rollup upserts", "commit",
                  "derived events' rows")
    )  # fmt: skip
    lines.append(
        f"(SQL write: sum of the parts above {us(sql_parts).strip()} µs; "
        f"SQLStorage.write timed whole {us(whole).strip()} µs)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=50_000, help="measured events per round")
    parser.add_argument("--warm", type=int, default=5_000, help="warm-up events")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefill", type=int, default=50_000, help="rows in scratch tables")
    args = parser.parse_args()
    print(f"# {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}, geo db: {geoip_db()}")  # fmt: skip
    import leza_middleware

    print(f"# leza_middleware from {Path(leza_middleware.__file__).parent}")
    print(f"# {len(real_uas(300))} distinct User-Agents, {len(real_ips(500))} distinct IPs")
    print(f"# {args.n:,} events per round after {args.warm:,} warm-up, batches of {args.batch}")
    results: list[tuple[dict[str, float], dict[str, float], float, dict[str, float]]] = []
    for rnd in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            maker = Leza(storage="memory://", trusted_proxies=["127.0.0.1"],
                         spill_dir=str(tmp / "spill-maker"),
                         secret_key="bench-secret-key-0123456789abcdef")  # fmt: skip
            raws, floor_records = make_raws(maker, args.warm + args.n)
            maker.shutdown(2)
            leza, whole, rows = leza_round(tmp, raws[args.warm :], raws[: args.warm], args.batch)
            floor = floor_round(tmp, floor_records[args.warm :], floor_records[: args.warm],
                                args.batch)  # fmt: skip
            sql = SQLStorage(f"sqlite:///{tmp / 'stmt.db'}")
            stmt = sql.insert_statement("access")
            sql.close()
            idx = index_costs(tmp, rows, prefill_rows(rows, args.prefill), stmt)
        results.append((leza, floor, whole, idx))
        print(f"\nround {rnd + 1}")
        print(table(leza, floor, whole, args.n))
        print_index(idx, args.n, args.prefill)
    if len(results) > 1:
        med = lambda key, part: statistics.median(r[part].get(key, 0.0) for r in results)  # noqa: E731
        leza_m = {k: med(k, 0) for k in results[0][0]}
        floor_m = {k: med(k, 1) for k in results[0][1]}
        whole_m = statistics.median(r[2] for r in results)
        idx_m = {k: med(k, 3) for k in results[0][3]}
        print(f"\nmedian of {len(results)} rounds")
        print(table(leza_m, floor_m, whole_m, args.n))
        print_index(idx_m, args.n, args.prefill)


def print_index(idx: dict[str, float], n: int, prefill: int) -> None:
    allx, key = idx["all indexes"], idx["primary key only"]
    print(f"leza_access INSERT + COMMIT on scratch tables ({prefill:,} rows before), µs/event:")
    for label, s in idx.items():
        note = ""
        if label == "primary key only":
            note = f"  (the secondary indexes together: {(allx - s) / n * 1e6:.2f})"
        elif label == "no key, no index":
            note = f"  (the text primary key: {(key - s) / n * 1e6:.2f})"
        elif label.startswith("all but "):
            note = f"  (dropping it saves {(allx - s) / n * 1e6:.2f})"
        elif label.startswith("key + "):
            note = f"  (it adds {(s - key) / n * 1e6:.2f} to the key alone)"
        print(f"  {label:<48} {s / n * 1e6:6.2f}{note}")


if __name__ == "__main__":
    main()
