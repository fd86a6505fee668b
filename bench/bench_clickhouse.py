"""ClickHouse: write rate, STATE and the first ACCESS page over 10M events, disk per event.

    python bench/bench_clickhouse.py [-n 300000] [--batch 512,10000,50000] [--runs 3]
                                     [--rows 10000000] [--days 30] [--shards] [--url URL]

Starts a throwaway ClickHouse server (tests/clickhouse_server.py: Debian's
``clickhouse-server`` or ``$LEZA_TEST_CLICKHOUSE_SERVER``) unless ``--url``
names one, and measures, side by side:

1. **Write**: N realistic access events (bench_storage.make_events: ~300
   User-Agents, ~200 networks, a few dozen performers) through
   ``ClickHouseStorage.write`` in batches of each ``--batch`` size, against
   the floor: the raw ``clickhouse-driver`` INSERT of the same pre-built row
   tuples, and of the same data as columns (``columnar=True``), and the
   events' columns through the driver (what ``write`` did before it sent
   ready Native blocks, storage/clickhouse_native.py). Wall-clock
   rate, this thread's CPU per event, and the server's CPU per event (from
   /proc: the server runs on this machine). ``--shards``: also through the
   Distributed table over two throwaway servers (``insert_distributed_sync``).
   First, the client's side alone (no server: into a socket another thread
   drains): the driver's serialisation of the columns, as ``write`` sent them
   before, against the ready Native block it sends now.
2. **Fill**: ``--rows`` access rows over ``--days`` days ending now, inserted
   with the driver in columnar blocks of 1M (a bench fixture: the rows of a
   50,000-event pool of (1) with fresh ids, times and request ids).
3. **STATE** for the last 24 hours: ``storage.traffic()`` alone and
   ``leza.query.state()`` with storage by kind (access/log/advisory on
   ClickHouse, the rest on a SQLite file), first with every hour live (read
   from the raw rows; the upkeep kept from running), then with the hours that
   are over settled ahead by the upkeep (``settle_traffic()``, which the
   recorder runs every minute) and the current hour live, then with every
   hour settled (what :meth:`purge` does first).
4. **ACCESS**: the first page (50 rows, newest first) with a FROM/TO filter
   of 24 hours and of the whole span, with and without an action filter.
5. **Disk**: ``system.parts`` of ``leza_access``: compressed and uncompressed
   bytes per event, before and after ``OPTIMIZE … FINAL``.

Budgets (issue 18): >= 300,000 access events/s written from one process;
STATE for 24 hours over 10M events <= 200 ms; first ACCESS page with FROM/TO
<= 100 ms. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_storage import batches, make_events
from clickhouse_server import CLUSTER, ThrowawayClickHouse, find_server, start_servers

from leza_middleware.events import AccessEvent
from leza_middleware.storage import QueryFilter
from leza_middleware.storage.clickhouse import ClickHouseStorage
from leza_middleware.storage.clickhouse_schema import KINDS
from leza_middleware.storage.clickhouse_traffic import MARKS, SETTLED, WRITTEN, settle_before

DAY = 86_400 * 1_000_000
HOUR = 3_600 * 1_000_000
ACCESS = KINDS["access"]
BUDGET_WRITE = 300_000
BUDGET_STATE_MS = 200.0
BUDGET_PAGE_MS = 100.0
SMALL_BATCH_EVENTS = 30_000


# -- measuring


class ServerCPU:
    """CPU seconds of the local ClickHouse server processes so far (/proc), or None."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.tick = os.sysconf("SC_CLK_TCK")

    def __call__(self) -> float | None:
        if not self.pids:
            return None
        total = 0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += int(fields[11]) + int(fields[12])
        return total / self.tick


class Sample:
    """Wall s, this thread's CPU s, the server's CPU s (or None) of one run."""

    def __init__(self, fn: Callable[[], Any], server: ServerCPU) -> None:
        gc.collect()
        s0 = server()
        c0, t0 = time.thread_time(), time.perf_counter()
        self.result = fn()
        self.wall = time.perf_counter() - t0
        self.cpu = time.thread_time() - c0
        s1 = server()
        self.server = None if s0 is None or s1 is None else s1 - s0


def rate_line(
    label: str, n: int, runs: list[Sample], floor: float | None = None, versus: str = "floor"
) -> float:
    """Print the median rate of ``runs`` (``n`` events each); return it."""
    rates = [n / r.wall for r in runs]
    med = statistics.median(rates)
    cpu = statistics.median(r.cpu for r in runs) / n * 1e6
    servers = [r.server for r in runs if r.server is not None]
    srv = f", server {statistics.median(servers) / n * 1e6:4.1f}" if servers else ""
    vs = f"  {med / floor:4.0%} of {versus}" if floor else ""
    print(
        f"  {label:<34} {med:>9,.0f}/s  (runs {' '.join(f'{x:,.0f}' for x in rates)}); "
        f"CPU µs/event: client {cpu:4.1f}{srv} = {1e6 / cpu:,.0f}/s of client CPU{vs}"
    )
    return med


def ms_line(label: str, runs: list[Sample], budget: float | None = None, extra: str = "") -> None:
    walls = [r.wall * 1000 for r in runs]
    cpu = statistics.median(r.cpu for r in runs) * 1000
    servers = [r.server * 1000 for r in runs if r.server is not None]
    srv = f", server {statistics.median(servers):5.0f}" if servers else ""
    med = statistics.median(walls)
    verdict = "" if budget is None else (" ok" if med <= budget else " OVER")
    print(
        f"  {label:<40} median {med:7.1f} ms wall{verdict} (CPU ms: client {cpu:5.1f}{srv}); "
        f"runs {' '.join(f'{x:.0f}' for x in walls)}{extra}"
    )


# -- 1. write


def reset(storage: ClickHouseStorage) -> None:
    for shard in storage.shards():
        for table in ("leza_access", SETTLED, MARKS, WRITTEN):
            storage.execute(f"TRUNCATE TABLE {storage.local(table)}", shard=shard)


def bench_write(
    storage: ClickHouseStorage,
    events: list[AccessEvent],
    sizes: list[int],
    runs: int,
    server: ServerCPU,
    label: str,
) -> None:
    all_events = events
    insert = f"INSERT INTO {storage.table(ACCESS.table)} ({ACCESS.names}) VALUES"
    settings = {"insert_distributed_sync": 1} if storage.sharded else None
    print(f"\nWrite access events, {label} (budget >= {BUDGET_WRITE:,}/s):")
    for size in sizes:
        # Small batches: fewer events. Each INSERT is a part on disk; past ~150
        # parts waiting to merge the server slows inserts down on purpose.
        events = all_events if size >= 5000 else all_events[:SMALL_BATCH_EVENTS]
        n = len(events)
        rows = [ACCESS.to_row(e) for e in events]
        parts = batches(events, size)
        row_parts = [rows[i : i + size] for i in range(0, n, size)]
        col_parts = [list(zip(*p, strict=True)) for p in row_parts]
        print(f" {n:,} events in batches of {size:,}:")

        def ours(parts: list[list[AccessEvent]] = parts) -> None:
            for b in parts:
                storage.write(b)

        def raw(columnar: bool, cols: Any = col_parts, rows: Any = row_parts) -> Callable[[], None]:
            data = cols if columnar else rows

            def run() -> None:
                with storage._client() as client:
                    for d in data:
                        client.execute(insert, d, columnar=columnar, settings=settings)

            return run

        def before(parts: list[list[AccessEvent]] = parts) -> None:
            # What write() did before the ready blocks: its columns, the driver's block.
            with storage._client() as client:
                for b in parts:
                    client.execute(insert, ACCESS.columns_of(b), columnar=True, settings=settings)

        results: dict[str, list[Sample]] = {"ours": [], "rows": [], "cols": [], "before": []}
        variants = (("cols", raw(True)), ("rows", raw(False)), ("before", before), ("ours", ours))
        for _ in range(runs):  # interleaved: a load spike hits all of them alike
            for key, fn in variants:
                reset(storage)
                results[key].append(Sample(fn, server))
        floor = rate_line("raw driver, columnar (floor)", n, results["cols"])
        rate_line("raw driver, row tuples", n, results["rows"], floor)
        rate_line("columns + driver's block (before)", n, results["before"], floor)
        rate_line("ClickHouseStorage.write", n, results["ours"], floor)
    reset(storage)


class _Drained:
    """A socket pair whose far end a thread reads and discards: what a client
    costs without a server (the reader's CPU is another thread's)."""

    def __init__(self) -> None:
        self.near, self.far = socket.socketpair()
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while self.far.recv(1 << 20):
            pass

    def close(self) -> None:
        self.near.close()
        self.reader.join(10)
        self.far.close()


def bench_client_alone(events: list[AccessEvent], size: int, runs: int) -> None:
    """The client's side alone, batches of ``size`` into a drained socket: the
    driver's serialisation of the columns (what ``write`` sent before) against
    the ready Native block (``write`` now; storage/clickhouse_native.py)."""
    from clickhouse_driver.block import ColumnOrientedBlock
    from clickhouse_driver.bufferedwriter import BufferedSocketWriter
    from clickhouse_driver.context import Context
    from clickhouse_driver.streams.native import BlockOutputStream

    from leza_middleware.storage.clickhouse_insert import _access_encoder, send

    class ServerInfo:
        used_revision = 54413  # 18.16's

    ctx = Context()
    ctx.server_info = ServerInfo()
    ctx.client_settings = {
        "strings_as_bytes": False,
        "strings_encoding": "utf-8",
        "use_numpy": False,
        "input_format_null_as_default": False,
    }
    ctx.settings = {}
    sink = _Drained()
    out = BlockOutputStream(BufferedSocketWriter(sink.near, 1 << 20), ctx)

    class Conn:
        fout = out.fout
        socket = sink.near

    parts = batches(events, size)
    names = list(ACCESS.columns)
    encoder = _access_encoder()

    def driver() -> None:
        for b in parts:
            out.write(ColumnOrientedBlock(names, [list(c) for c in ACCESS.columns_of(b)]))

    def ready() -> None:
        for b in parts:
            send(Conn, encoder.encode(b).frames(False))

    nothing = ServerCPU([])
    results: dict[str, list[Sample]] = {"driver": [], "ready": []}
    for _ in range(runs):
        results["driver"].append(Sample(driver, nothing))
        results["ready"].append(Sample(ready, nothing))
    sink.close()
    n = len(events)
    print(f"\nClient side alone, {n:,} events in batches of {size:,}, into a drained socket:")
    before = rate_line("columns + the driver's block (before)", n, results["driver"])
    rate_line("ready Native block (ClickHouseStorage)", n, results["ready"], before, "before")


# -- 2. fill


def fill(
    storage: ClickHouseStorage, pool: list[AccessEvent], rows: int, days: int, end: int
) -> None:
    """``rows`` access rows spread evenly over ``days`` days before ``end``: the
    rows of ``pool`` in turn, with fresh ids, times and request ids, generated
    by the server (``INSERT … SELECT`` over ``numbers()``, blocks of 1M) from
    a copy of the pool it holds in memory."""
    names = [name for name, _ in ACCESS.columns]
    db = f"`{storage.database}`"
    cols = ", ".join(f"{n} {t}" for n, t in ACCESS.columns)
    storage.execute(f"DROP TABLE IF EXISTS {db}.bench_pool")
    storage.execute(f"CREATE TABLE {db}.bench_pool (k UInt64, {cols}) ENGINE = Memory")
    storage.execute(
        f"INSERT INTO {db}.bench_pool (k, {ACCESS.names}) VALUES",
        [(i, *ACCESS.to_row(e)) for i, e in enumerate(pool)],
    )
    step = days * DAY // rows
    start = end - step * rows
    prefix = os.urandom(6).hex()
    made = {
        "ts": f"toInt64({start} + number * {step})",
        "id": f"concat(lower(hex(toUInt64({start} + number * {step}))), '{prefix}', "
        "lower(hex(number)))",
        "request_id": f"concat('{prefix}-', lower(hex(number)))",
    }
    select = ", ".join(made.get(n, n) for n in names)
    block = 1_000_000
    t0 = time.perf_counter()
    for lo in range(0, rows, block):
        k = min(block, rows - lo)
        storage.execute(
            f"INSERT INTO {storage.table(ACCESS.table)} ({ACCESS.names}) SELECT {select} "
            f"FROM (SELECT number, toUInt64(number % {len(pool)}) AS k FROM numbers({lo}, {k})) "
            f"ANY LEFT JOIN {db}.bench_pool USING k"
        )
        done = lo + k
        print(f"\r  filled {done:,} rows ({done / (time.perf_counter() - t0):,.0f}/s)", end="")
    print()
    storage.execute(f"DROP TABLE {db}.bench_pool")


# -- 3, 4: reads


@contextmanager
def leza_on(url: str) -> Iterator[Any]:
    from leza_middleware import Leza

    with tempfile.TemporaryDirectory(prefix="leza-bench-ch-") as tmp:
        routes = {"access": url, "log": url, "advisory": url, "default": f"sqlite:///{tmp}/leza.db"}
        leza = Leza(storage=routes, geoip_db=False, sessions=False, secret_key="bench-" * 6)
        try:
            yield leza
        finally:
            leza.shutdown(timeout=5)


def bench_state(
    storage: ClickHouseStorage, leza: Any, end: int, runs: int, server: ServerCPU, note: str
) -> None:
    from leza_middleware.events.base import iso_from_us
    from leza_middleware.state import bucket_seconds_for

    since = end - DAY
    bucket = bucket_seconds_for(since, end)
    print(f" STATE, last 24 hours, {note} (budget <= {BUDGET_STATE_MS:.0f} ms):")
    traffic = [Sample(lambda: storage.traffic(since, end, bucket), server) for _ in range(runs)]
    ms_line("storage.traffic()", traffic, BUDGET_STATE_MS)
    s, u = iso_from_us(since), iso_from_us(end)
    state = [Sample(lambda: leza.query.state(since=s, until=u), server) for _ in range(runs)]
    got = state[-1].result
    ms_line(
        "leza.query.state()", state, BUDGET_STATE_MS,
        f"  [{got['requests']:,} requests, {len(got['endpoints'])} endpoints]",
    )  # fmt: skip


@contextmanager
def no_upkeep() -> Iterator[None]:
    """STATE without a recorder settles hours before reading (build_state): not here."""
    saved = ClickHouseStorage.settle_traffic
    ClickHouseStorage.settle_traffic = lambda self, now_us=None: 0  # type: ignore[method-assign]
    try:
        yield
    finally:
        ClickHouseStorage.settle_traffic = saved  # type: ignore[method-assign]


def bench_pages(
    storage: ClickHouseStorage, end: int, days: int, runs: int, server: ServerCPU
) -> None:
    print(f" ACCESS, first page of 50, newest first (budget <= {BUDGET_PAGE_MS:.0f} ms):")
    for span, span_label in ((DAY, "24 h"), (days * DAY, f"{days} days")):
        for action in (None, "denied", "login_failed"):
            flt = QueryFilter(since=end - span, until=end, limit=50, action=action)
            samples = [
                Sample(lambda f=flt: storage.query("access", f), server) for _ in range(runs)
            ]
            n = len(samples[-1].result.events)
            label = f"FROM/TO {span_label}" + (f" + action={action}" if action else "")
            ms_line(label, samples, BUDGET_PAGE_MS, f"  [{n} rows]")
    flt = QueryFilter(since=end - DAY, until=end, limit=50)
    first = storage.query("access", flt)
    nxt = QueryFilter(since=end - DAY, until=end, limit=50, cursor=first.next_cursor)
    ms_line("FROM/TO 24 h, second page (cursor)",
            [Sample(lambda: storage.query("access", nxt), server) for _ in range(runs)],
            BUDGET_PAGE_MS)  # fmt: skip


# -- 5. disk


def disk(storage: ClickHouseStorage, label: str) -> None:
    rows = storage.execute(
        "SELECT sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes), count() "
        "FROM system.parts WHERE database = %(d)s AND table = %(t)s AND active",
        {"d": storage.database, "t": ACCESS.table},
    )
    n, comp, raw, parts = (int(v) for v in rows[0])
    if not n:
        return
    print(
        f"  {label:<22} {n:,} rows in {parts} parts: {comp / 2**20:,.0f} MiB compressed "
        f"= {comp / n:.1f} B/event, {raw / n:.0f} B/event uncompressed (x{raw / comp:.1f})"
    )


# -- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=300_000, help="events per write run")
    ap.add_argument("--batch", default="512,10000,50000", help="write batch sizes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reads", type=int, default=7, help="runs of each read")
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the read fixture")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--shards", action="store_true", help="also write through 2 shards")
    ap.add_argument("--url", help="an existing server (its CPU is not measured)")
    ap.add_argument("--skip-write", action="store_true")
    ap.add_argument("--skip-reads", action="store_true")
    args = ap.parse_args()
    # A SIGTERM (timeout, kill) still runs the finally below: no server left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    servers: list[ThrowawayClickHouse] = []
    if args.url:
        url = args.url
    else:
        command = find_server()
        if command is None:
            sys.exit("no clickhouse-server found (set LEZA_TEST_CLICKHOUSE_SERVER)")
        servers = start_servers(command, 2 if args.shards else 1)
        # OPTIMIZE … FINAL and the 10M-row load stay silent longer than the
        # default 10 s timeout (made for the recorder's batches).
        url = servers[0].url + "?timeout=600"
        print(f"ClickHouse {servers[0].version()} (throwaway, {len(servers)} server(s))")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    try:
        storage = ClickHouseStorage(url)
        storage.setup()
        one = ServerCPU([s.proc.pid for s in servers[:1] if s.proc is not None])
        events = make_events(args.n)
        if not args.skip_write:
            sizes = [int(x) for x in args.batch.split(",")]
            bench_client_alone(events, sizes[-1], args.runs)
            bench_write(storage, events, sizes, args.runs, one, "one server")
            if args.shards:
                sharded = ClickHouseStorage(
                    url.split("?")[0].rsplit("/", 1)[0]
                    + f"/leza_sharded?cluster={CLUSTER}&timeout=600"
                )
                sharded.setup()
                both = ServerCPU([s.proc.pid for s in servers if s.proc is not None])
                bench_write(sharded, events, sizes[-1:], args.runs, both, "2 shards (Distributed)")
                sharded.close()
        if args.skip_reads:
            return
        # The fill ends now: the window's last hour is the current one, live.
        end = time.time_ns() // 1000
        print(f"\nFill {args.rows:,} access rows over {args.days} days:")
        reset(storage)
        fill(storage, events[:50_000], args.rows, args.days, end)
        disk(storage, "as inserted")
        print(f"\nReads over {args.rows:,} events ({args.days} days):")
        with leza_on(url) as leza:
            with no_upkeep():
                bench_state(storage, leza, end, args.reads, one, "every hour live (no upkeep)")
            bench_pages(storage, end, args.days, args.reads, one)
            # The recorder's upkeep, run until it is done (each call is time-boxed):
            # every hour that is over; the current one stays live.
            t0 = time.perf_counter()
            calls = hours = 0
            while n := storage.settle_traffic(end):
                calls, hours = calls + 1, hours + n
            took = time.perf_counter() - t0
            print(f"  (upkeep: settled {hours} hours in {calls} calls, {took:.1f} s, "
                  f"{took / max(hours, 1) * 1000:.0f} ms an hour)")  # fmt: skip
            bench_state(storage, leza, end, args.reads, one,
                        "hours settled ahead, the current hour live")  # fmt: skip
            t0 = time.perf_counter()
            hours = settle_before(storage, end + 1)
            print(f"  (purge's settling: {hours} more hours in {time.perf_counter() - t0:.1f} s)")
            bench_state(storage, leza, end, args.reads, one, "every hour settled (as by a purge)")
        print("\nDisk (system.parts of leza_access):")
        disk(storage, "before OPTIMIZE")
        storage.execute(f"OPTIMIZE TABLE {storage.local('leza_access')} FINAL")
        disk(storage, "after OPTIMIZE FINAL")
        storage.close()
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    main()
