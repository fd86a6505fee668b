"""The floor: the least an ASGI middleware can do and still store every request.

``bench_throughput.py`` runs it beside the bare app and leza, in the same
alternating rounds, to show what this architecture allows in Python (issue 17):

- on the request path, a send wrapper that notes the status, ``dict()`` of the
  raw headers, and one tuple appended to a ``deque`` — nothing else;
- on a writer thread, once a second (or sooner when 2,000 are waiting): the raw
  User-Agent bytes mapped to a device id and the client IP (the last hop of
  ``X-Forwarded-For``, the proxy being trusted) to a geo id through dicts, parsing
  with ua-parser and looking up the MaxMind database only on a miss; then narrow
  rows written with ``sqlite3``'s ``executemany`` in one transaction, WAL mode,
  the devices and places seen for the first time in the same transaction.

It keeps no request id, session, performer, permissions, redaction, retries,
spill files or rollups: leza's gap to it is the price of those plus overhead.
Every request is stored (checked by the bench like leza's).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from typing import Any

_SCHEMA = """
create table if not exists floor_device (id integer primary key, family text, os text,
                                         device text, bot integer);
create table if not exists floor_geo (id integer primary key, country text, city text);
create table if not exists floor_access (ts integer, duration_us integer, method text,
                                         path text, status integer, ip text,
                                         device_id integer, geo_id integer);
"""


INSERT_ACCESS = "insert into floor_access values (?, ?, ?, ?, ?, ?, ?, ?)"


class Floor:
    def __init__(self, app: Any, db: str, geoip_db: str) -> None:
        self.app = app
        self.db = db
        self.queue: deque[tuple[Any, ...]] = deque()
        self.wake = threading.Event()
        self.stopping = False
        self.devices: dict[bytes, int] = {}
        self.geos: dict[str, int] = {}
        self.geoip = geoip_db
        self.writing = threading.Lock()  # held while a batch is written (flush())
        self.thread = threading.Thread(target=self._run, name="floor-writer", daemon=True)
        self.thread.start()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":

            async def lifespan_send(message: Any) -> None:
                if message["type"] == "lifespan.shutdown.complete":
                    self.stop()
                await send(message)

            await self.app(scope, receive, lifespan_send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.time_ns()
        status = 0

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            queue = self.queue
            queue.append((start, time.time_ns() - start, scope["method"], scope["path"],
                           status, dict(scope["headers"])))  # fmt: skip
            if len(queue) >= 2000:
                self.wake.set()

    def flush(self) -> None:
        """Wait until every queued record is written (in-process benches)."""
        while self.queue:
            self.wake.set()
            time.sleep(0.0005)
        with self.writing:
            pass

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(30)

    # -- the writer thread -----------------------------------------------------

    def _run(self) -> None:
        from ua_parser import parse

        self.parse = parse
        try:
            import maxminddb

            self.reader: Any = maxminddb.open_database(self.geoip) if self.geoip != "off" else None
        except (ImportError, OSError, ValueError):
            self.reader = None
        con = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False)
        con.execute("pragma journal_mode=wal")
        con.execute("pragma synchronous=normal")
        con.executescript(_SCHEMA)
        while True:
            self.wake.wait(1.0)
            self.wake.clear()
            with self.writing:
                self._write(con)
            if self.stopping:
                self._write(con)
                con.close()
                return

    def _write(self, con: sqlite3.Connection) -> None:
        queue = self.queue
        batch = [queue.popleft() for _ in range(len(queue))]
        if not batch:
            return
        new_devices, new_geos, rows = self.rows(batch)
        con.execute("begin")
        self.store_dimensions(con, new_devices, new_geos)
        con.executemany(INSERT_ACCESS, rows)
        con.execute("commit")

    def rows(
        self, batch: list[tuple[Any, ...]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(new device rows, new geo rows, access rows) of a batch: dict lookups,
        parsing and locating only on a miss (bench_breakdown times this step)."""
        new_devices: list[tuple[Any, ...]] = []
        new_geos: list[tuple[Any, ...]] = []
        devices, geos = self.devices, self.geos
        rows = []
        for ts, duration, method, path, status, headers in batch:
            ua = headers.get(b"user-agent", b"")
            device = devices.get(ua)
            if device is None:
                device = devices[ua] = len(devices) + 1
                r = self.parse(ua.decode("latin-1"))
                new_devices.append((
                    device,
                    r.user_agent.family if r.user_agent else None,
                    r.os.family if r.os else None,
                    r.device.family if r.device else None,
                    int(bool(r.device and r.device.family == "Spider")),
                ))  # fmt: skip
            forwarded = headers.get(b"x-forwarded-for")
            ip = forwarded.rsplit(b",", 1)[-1].strip().decode("latin-1") if forwarded else ""
            geo = geos.get(ip)
            if geo is None:
                geo = geos[ip] = len(geos) + 1
                new_geos.append((geo, *self._locate(ip)))
            rows.append((ts // 1000, duration // 1000, method, path, status, ip, device, geo))
        return new_devices, new_geos, rows

    @staticmethod
    def store_dimensions(
        con: sqlite3.Connection, devices: list[tuple[Any, ...]], geos: list[tuple[Any, ...]]
    ) -> None:
        if devices:
            con.executemany("insert into floor_device values (?, ?, ?, ?, ?)", devices)
        if geos:
            con.executemany("insert into floor_geo values (?, ?, ?)", geos)

    def _locate(self, ip: str) -> tuple[str | None, str | None]:
        if self.reader is None or not ip:
            return None, None
        try:
            rec = self.reader.get(ip) or {}
        except ValueError:
            return None, None
        country = (rec.get("country") or {}).get("iso_code")
        city = ((rec.get("city") or {}).get("names") or {}).get("en")
        return country, city
