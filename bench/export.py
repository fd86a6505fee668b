"""``leza export`` and ``leza purge`` over 100,000 and 1,000,000 access events in SQLite.

    python bench/export.py [--rows 100000,1000000] [--formats jsonl,csv] [--no-tracemalloc]

Export must run in constant memory (issue 6): the same peak for 100k rows as
for 1M. Each export runs as its own ``python -m leza_middleware export``
process writing to a file; its wall time gives events/s and its peak RSS
(``VmHWM``) how much memory it took, next to an export of 0 rows (the interpreter,
SQLAlchemy and the Leza itself). Then the same export in this process under
``tracemalloc``: the peak of Python allocations, slower but exact. Then a
purge of the older half of the 1M-row file (a copy): time, rows/s, batches
and the longest batch (how long a writer may wait for SQLite's lock).

The databases are built once and cached (``bench/_fixtures.py``). Prints
numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fixtures import access_db

from leza_middleware.cli import main as leza_main
from leza_middleware.storage import QueryFilter, SQLStorage

MB = 1024 * 1024


#: Runs the CLI's main() and then reports the process's own peak RSS: VmHWM
#: counts from exec, where ``ru_maxrss`` of a child forked from this (large)
#: process starts at this process's size.
_CHILD = (
    "import sys\n"
    "from leza_middleware.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print('VmHWM', status.split('VmHWM:')[1].split()[0], file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def export_process(db: Path, fmt: str, out: Path, *extra: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one process running ``leza export``."""
    cmd = [sys.executable, "-c", _CHILD, "export", "--storage", f"sqlite:///{db}",
           "--kind", "access", "--format", fmt, "-o", str(out), *extra]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"export failed ({done.returncode}): {done.stderr}")
    kib = int(done.stderr.rsplit("VmHWM", 1)[1].split()[0])
    return seconds, kib / 1024


def export_traced(db: Path, fmt: str, out: Path) -> float:
    """Peak MB of Python allocations during an in-process export."""
    argv = ["export", "--storage", f"sqlite:///{db}", "--kind", "access", "--format", fmt,
            "-o", str(out)]  # fmt: skip
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            code = leza_main(argv)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0
    return peak / MB


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def bench_export(sizes: list[int], formats: list[str], traced: bool, tmp: Path) -> None:
    dbs = {n: access_db(None, n) for n in sizes}
    print()
    print("export, newest first, to a file (events/s: wall time of the whole process)")
    header = f"  {'rows':>10}  {'format':<6}  {'seconds':>8}  {'events/s':>9}  {'file MB':>8}  "
    header += f"{'peak RSS MB':>11}" + (f"  {'traced peak MB':>14}" if traced else "")
    print(header)
    for fmt in formats:
        out = tmp / f"export.{fmt}"
        # 0 rows: what the process costs before the first row is read.
        seconds, rss = export_process(dbs[sizes[0]], fmt, out, "--since", "2999-01-01")
        traced_mb = f"  {export_traced(dbs[sizes[0]], fmt, out):>14.1f}" if traced else ""
        print(f"  {0:>10,}  {fmt:<6}  {seconds:>8.2f}  {'-':>9}  {0:>8.1f}  {rss:>11.1f}"
              + traced_mb)  # fmt: skip
        for n in sizes:
            seconds, rss = export_process(dbs[n], fmt, out)
            lines = count_lines(out)
            expected = n + (1 if fmt == "csv" else 0)  # the CSV header
            if lines != expected:
                raise SystemExit(f"{out}: {lines:,} lines, expected {expected:,}")
            size_mb = out.stat().st_size / MB
            traced_mb = f"  {export_traced(dbs[n], fmt, out):>14.1f}" if traced else ""
            print(f"  {n:>10,}  {fmt:<6}  {seconds:>8.2f}  {n / seconds:>9,.0f}  "
                  f"{size_mb:>8.1f}  {rss:>11.1f}" + traced_mb)  # fmt: skip
            out.unlink()


def bench_purge(rows: int, tmp: Path, batch_size: int) -> None:
    source = access_db(None, rows)
    db = tmp / "purge.db"
    shutil.copyfile(source, db)
    with sqlite3.connect(db) as conn:  # the older half: purge at its newest row
        (cutoff,) = conn.execute(
            "SELECT ts FROM leza_access ORDER BY ts LIMIT 1 OFFSET ?", (rows // 2,)
        ).fetchone()
    conn.close()
    storage = SQLStorage(f"sqlite:///{db}")
    storage.setup()
    batches = deleted = 0
    longest = 0.0
    t0 = last = time.perf_counter()
    for n in storage.purge_batches("access", cutoff, batch_size):
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
        batches += 1
        deleted += n
    seconds = time.perf_counter() - t0
    left = storage.count("access", QueryFilter(limit=1)) or 0
    storage.close()
    print()
    print(f"purge of the older half of {rows:,} access events (batch size {batch_size:,})")
    rate = deleted / seconds
    print(f"  deleted {deleted:,} rows in {seconds:.2f} s ({rate:,.0f} rows/s), {batches} "
          f"batches, longest batch {longest * 1000:.0f} ms; {left:,} rows left")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated sizes")
    parser.add_argument("--formats", default="jsonl,csv")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the traced runs")
    parser.add_argument("--purge-rows", type=int, default=1_000_000, help="0: no purge")
    parser.add_argument("--batch-size", type=int, default=10_000, help="purge batch size")
    args = parser.parse_args()
    sizes = sorted(int(x) for x in args.rows.split(","))
    formats = args.formats.split(",")
    versions = f"python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}"
    print(f"{versions}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        bench_export(sizes, formats, not args.no_tracemalloc, Path(tmp))
        if args.purge_rows:
            bench_purge(args.purge_rows, Path(tmp), args.batch_size)


if __name__ == "__main__":
    main()
