"""Shared bench fixtures: a SQLite file of N realistic access events, built once.

    from _fixtures import access_db
    path = access_db(None, 1_000_000)          # cached under $LEZA_BENCH_CACHE or /tmp
    path = access_db("/tmp/x.db", 100_000)     # at a path of your choice (rebuilt if stale)

Rows come from ``bench_storage.make_events`` (rotating real User-Agents,
networks with geo, performers with organizations), re-stamped evenly over the
``span_days`` before the build, newest last. The first 50,000 go through
``SQLStorage.write`` (which also stores their device, geo and performer rows);
the rest reuse those references and go through ``sqlite3.executemany`` of the
storage's own INSERT in ``ts`` order, ~10x faster than building events.

A file is reused only when its stamp matches: the schema (tables + indexes),
the generator version, ``rows`` and ``span_days``. The file is built under a
temporary name and renamed, so an interrupted build never looks complete.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_storage import make_events
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from leza_middleware.storage import SQLStorage
from leza_middleware.storage.models import metadata

__all__ = ["DAY_US", "access_db", "cache_dir"]

DAY_US = 86_400 * 1_000_000
GENERATOR_VERSION = "1"
_POOL = 50_000
_CHUNK = 20_000


def cache_dir() -> Path:
    path = Path(os.environ.get("LEZA_BENCH_CACHE") or Path(tempfile.gettempdir()) / "leza-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stamp(rows: int, span_days: int) -> str:
    """Changes whenever a table or index changes, or the generator or its size does."""
    dialect = sqlite.dialect()
    ddl = [str(CreateTable(t).compile(dialect=dialect)) for t in metadata.sorted_tables]
    ddl += [
        str(CreateIndex(ix).compile(dialect=dialect))
        for t in metadata.sorted_tables
        for ix in sorted(t.indexes, key=lambda ix: str(ix.name))
    ]
    ddl.append(f"generator {GENERATOR_VERSION} rows {rows} span {span_days}")
    return hashlib.sha256("\n".join(ddl).encode()).hexdigest()[:16]


def _stamp_of(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT stamp FROM bench_fixture").fetchone()
        conn.close()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def access_db(
    path: str | os.PathLike[str] | None, rows: int, *, span_days: int = 60, quiet: bool = False
) -> Path:
    """A SQLite file holding ``rows`` access events (see the module docstring)."""
    stamp = _stamp(rows, span_days)
    target = Path(path) if path is not None else cache_dir() / f"access-{rows}-{stamp}.db"
    if _stamp_of(target) == stamp:
        return target
    t0 = time.perf_counter()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.building")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    end = time.time_ns() // 1000
    start = end - span_days * DAY_US
    step = max((end - start) // max(rows, 1), 1)
    pool = make_events(min(rows, _POOL), seed=7)
    prefix = os.urandom(4).hex()

    def row(i: int) -> tuple[object, ...]:
        ts = start + i * step
        return (f"{ts:013x}{prefix}{i:08x}", ts, *pool[i % len(pool)].row[2:])

    storage = SQLStorage(f"sqlite:///{tmp}")
    storage.setup()
    from leza_middleware.events import AccessEvent

    head = min(rows, len(pool))
    for lo in range(0, head, 5000):
        storage.write([
            AccessEvent(row(i), pool[i].device, pool[i].geo, pool[i].performer)
            for i in range(lo, min(lo + 5000, head))
        ])  # fmt: skip
    sql = storage.insert_statement("access")
    storage.close()
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # a throw-away file until it is renamed
    for lo in range(head, rows, _CHUNK):
        conn.executemany(sql, [row(i) for i in range(lo, min(lo + _CHUNK, rows))])
        conn.commit()
        if not quiet and (lo + _CHUNK) % 200_000 == 0:
            print(f"  {lo + _CHUNK:,} access events ({time.perf_counter() - t0:.0f} s)")
    conn.execute("CREATE TABLE bench_fixture (stamp TEXT NOT NULL)")
    conn.execute("INSERT INTO bench_fixture VALUES (?)", (stamp,))
    conn.commit()
    conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to rename or copy
    conn.close()
    for stale in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        stale.unlink(missing_ok=True)
    os.replace(tmp, target)
    if not quiet:
        print(f"built {target} ({rows:,} access events) in {time.perf_counter() - t0:.0f} s")
    return target
