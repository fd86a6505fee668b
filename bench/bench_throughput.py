"""Throughput: a bare Starlette hello-world vs the same app with LezaMiddleware.

Four variants run under uvicorn (one worker), driven by wrk over loopback with
rotating real User-Agents and client IPs (X-Forwarded-For from a trusted
loopback proxy): ``bare``; ``floor`` (floor_middleware.py: the least a
middleware can do and still store every request, device and place, in SQLite);
``leza``, every event written to SQLite (no sampling); and ``path``, leza's
request path alone (records built, then discarded), which splits the cost
between the request path and the recorder. leza/bare, floor/bare and
leza/floor are printed side by side.
Rounds alternate the variants so drift affects all alike. After each leza and
floor round the server is stopped gracefully and the events stored are compared
with the requests the server answered (counted by an outermost counter present in
every variant), and each variant reports what the garbage collector did during
the measured run (not start-up or warm-up): µs per request, collections per
10,000 requests by generation, and full collections per 10 s (budget: <= 1).

    python bench/bench_throughput.py [--rounds 3] [--duration 8] [--connections 64] [--pin]
                                     [--variants bare,floor,path,leza]

``PYTHONPATH=/path/to/other/checkout python bench/bench_throughput.py --variants
leza`` measures another version of leza (its ``path`` variant needs the request
core, 2026-12 onwards).

Needs: wrk (Debian package), uvicorn (with uvloop + httptools for realistic numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _testdata import testdata

HERE = Path(__file__).resolve().parent

APP = textwrap.dedent(
    """
    import gc, json, os, signal, time
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request):
        return PlainTextResponse("Hello, world!")

    inner = Starlette(routes=[Route("/", hello)])
    variant = os.environ["BENCH_VARIANT"]

    if variant == "floor":
        from benchfloor import Floor
        inner = Floor(inner, os.environ["LEZA_STORAGE"].removeprefix("sqlite:///"),
                      os.environ["LEZA_GEOIP_DB"])

    if variant in ("leza", "path"):
        from leza_middleware import Leza, LezaMiddleware
        leza = Leza(trusted_proxies=["127.0.0.1"])   # storage, geo from LEZA_* env
        inner = LezaMiddleware(inner, leza=leza)
        if variant == "path":
            # The request path alone: records are built, then discarded.
            inner.core.offer = lambda record: None

    # The garbage collector (every thread): collections and seconds by generation.
    # The bench sends SIGUSR1 as its measured run starts and as it ends: each marks
    # the counts, so start-up and warm-up collections are not charged to the run.
    # Seconds of CPU of the collecting thread (thread_time): wall time would count the
    # moments this busy machine gives the CPU to another process mid-collection.
    gens = [[0, 0.0], [0, 0.0], [0, 0.0]]  # per generation: collections, seconds
    gc_start = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            gc_start[0] = time.thread_time()
        else:
            g = gens[info["generation"]]
            g[0] += 1
            g[1] += time.thread_time() - gc_start[0]

    gc.callbacks.append(on_gc)
    served = 0
    marks = []

    def mark(signum, frame):
        marks.append({"t": time.monotonic(), "served": served, "gc": [list(g) for g in gens]})

    signal.signal(signal.SIGUSR1, mark)

    async def app(scope, receive, send):
        # Outermost counter (same in every variant): requests answered.
        global served
        if scope["type"] == "lifespan":
            async def send_wrapper(message):
                if message["type"] == "lifespan.shutdown.complete":
                    with open(os.environ["BENCH_COUNT_FILE"], "w") as f:
                        json.dump({"served": served, "marks": marks}, f)
                await send(message)
            return await inner(scope, receive, send_wrapper)
        await inner(scope, receive, send)
        served += 1
    """
)

WRK_LUA = """
local uas = {UAS}
local ips = {IPS}
local i = 0
request = function()
  i = i + 1
  local headers = {{}}
  headers["User-Agent"] = uas[(i % #uas) + 1]
  headers["X-Forwarded-For"] = ips[(i % #ips) + 1]
  return wrk.format("GET", "/", headers)
end
"""

FALLBACK_UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
]


def lua_list(items: list[str]) -> str:
    return "{" + ",".join(json.dumps(x) for x in items) + "}"


def real_uas(n: int) -> list[str]:
    """Up to ``n`` real User-Agents from the shared corpus, else the few fallbacks
    (with a note on stderr: ~5 User-Agents make the caches look better than real)."""
    path = testdata("ua", "uas_1000.json")
    if path is not None:
        uas = [u for u in json.loads(path.read_text()) if '"' not in u and "\\" not in u]
        return uas[:n]
    print("# shared UA corpus not found: using 5 fallback User-Agents", file=sys.stderr)
    return FALLBACK_UAS


def real_ips(n: int) -> list[str]:
    """Public IPs spread over many networks (geo cache misses, like real traffic)."""
    out = []
    a, b = 11, 7
    for k in range(n):
        a = (a * 37 + 11) % 223 + 1
        b = (b * 53 + k) % 256
        if a in (10, 127, 172, 192, 169, 100):
            a += 1
        out.append(f"{a}.{b}.{(k * 7) % 256}.{(k * 13) % 254 + 1}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def geoip_db() -> str:
    try:
        from _maxminddb_geolite2 import geolite2_database

        return str(geolite2_database())
    except ImportError:
        city = testdata("geoip", "GeoLite2-City-Test.mmdb")
        return str(city) if city is not None else "off"


def start_server(
    work: Path, variant: str, cpu: int, db: Path
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    count_file = work / f"count-{variant}-{port}.txt"
    env = dict(os.environ)
    env.update(
        BENCH_VARIANT=variant,
        BENCH_COUNT_FILE=str(count_file),
        LEZA_STORAGE=f"sqlite:///{db}",
        LEZA_GEOIP_DB=geoip_db(),
        LEZA_SPILL_DIR=str(work / "spill"),
        LEZA_SECRET_KEY="bench-secret-key-0123456789",
        # A PYTHONPATH given to the bench comes after the app's folder: point it at
        # another checkout to measure that version of leza side by side.
        PYTHONPATH=os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH")) if p),
    )
    pin = ["taskset", "-c", str(cpu)] if cpu >= 0 else []
    cmd = [
        *pin, sys.executable, "-m", "uvicorn", "benchapp:app",
        "--port", str(port), "--log-level", "warning", "--no-access-log",
        "--no-proxy-headers", "--lifespan", "on",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=work)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port, count_file
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen[bytes], count_file: Path) -> dict[str, Any]:
    """Stop gracefully; what the app counted: requests served, and its marks (requests
    and collections by generation when :func:`mark` signalled it)."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    report: dict[str, Any] = json.loads(count_file.read_text())
    return report


def mark(proc: subprocess.Popen[bytes]) -> None:
    """Have the server note its requests and GC counts now (the window's edges)."""
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.1)  # an idle server handles it at once; let it, before wrk starts


def gc_window(report: dict[str, Any]) -> dict[str, float]:
    """What the garbage collector did between the two marks: collections per 10,000
    requests by generation, µs per request, and full collections per 10 s."""
    first, last = report["marks"][0], report["marks"][-1]
    served = max(last["served"] - first["served"], 1)
    seconds = max(last["t"] - first["t"], 1e-9)
    full = last["gc"][2][0] - first["gc"][2][0]
    out = {"us": 0.0, "full_per_10s": full * 10 / seconds}
    if full:  # CPU ms of one full collection: the pause it puts the app in
        out["full_ms"] = (last["gc"][2][1] - first["gc"][2][1]) * 1e3 / full
    for gen in range(3):
        n = last["gc"][gen][0] - first["gc"][gen][0]
        out[f"gen{gen}"] = n * 10_000 / served
        out["us"] += (last["gc"][gen][1] - first["gc"][gen][1]) * 1e6 / served
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # the main thread is named after the program; others by their thread name
        key = "app thread" if task.name == str(pid) else name
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def run_wrk(
    port: int, script: Path, seconds: float, connections: int, cpu: int
) -> tuple[float, int]:
    pin = ["taskset", "-c", str(cpu)] if cpu >= 0 else []
    cmd = [
        *pin, "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s",
        "-s", str(script), f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not m or not total or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk run not clean:\n{out}")
    return float(m.group(1)), int(total.group(1))


def stored_events(db: Path, table: str) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute(f"select count(*) from {table}").fetchone()[0])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--pin",
        action="store_true",
        help="pin uvicorn (and its recorder thread) to CPU 0 and wrk to CPU 1",
    )
    ap.add_argument(
        "--variants",
        default="bare,floor,path,leza",
        help="comma-separated subset of bare,floor,path,leza (bare is always run)",
    )
    args = ap.parse_args()
    chosen = {"bare", *args.variants.split(",")}
    if not chosen <= {"bare", "floor", "path", "leza"}:
        ap.error(f"unknown variant in --variants {args.variants!r}")
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    ncpu = os.cpu_count() or 1
    server_cpu, wrk_cpu = (0, (1 if ncpu > 1 else 0)) if args.pin else (-1, -1)

    work = Path(tempfile.mkdtemp(prefix="leza-bench-"))
    (work / "benchapp.py").write_text(APP)
    shutil.copy(HERE / "floor_middleware.py", work / "benchfloor.py")
    uas, ips = real_uas(300), real_ips(500)
    script = work / "rotate.lua"
    script.write_text(WRK_LUA.format(UAS=lua_list(uas), IPS=lua_list(ips)))
    print(f"# {len(uas)} distinct UAs, {len(ips)} distinct IPs, geo db: {geoip_db()}")
    placement = (
        f"uvicorn pinned to CPU {server_cpu} (with its recorder thread), wrk to CPU {wrk_cpu}"
        if args.pin
        else f"uvicorn (1 worker) and wrk (1 thread) scheduled freely on {ncpu} CPUs"
    )
    print(f"# {placement}; {args.rounds} rounds x {args.duration}s, {args.connections} connections")

    variants = tuple(v for v in ("bare", "floor", "path", "leza") if v in chosen)
    results: dict[str, list[float]] = {v: [] for v in variants}
    # µs of CPU per request, per thread of the server (leza-recorder is ours)
    cpu_per_request: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    # the garbage collector during each measured run (gc_window)
    gc_runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    served_total = {"floor": 0, "leza": 0}
    stored_total = {"floor": 0, "leza": 0}
    for rnd in range(args.rounds):
        for variant in variants:
            db = work / f"{variant}-{rnd}.db"
            proc, port, count_file = start_server(work, variant, server_cpu, db)
            try:
                run_wrk(port, script, args.warmup, args.connections, wrk_cpu)
                mark(proc)
                before = thread_cpu(proc.pid)
                rps, sent = run_wrk(port, script, args.duration, args.connections, wrk_cpu)
                after = thread_cpu(proc.pid)
                mark(proc)
            finally:
                report = stop_server(proc, count_file)
            served = int(report["served"])
            gc_runs[variant].append(gc_window(report))
            for name, seconds in after.items():
                spent = (seconds - before.get(name, 0.0)) * 1e6 / sent
                if spent >= 0.05:
                    cpu_per_request[variant].setdefault(name, []).append(spent)
            results[variant].append(rps)
            line = f"round {rnd + 1} {variant:5s}: {rps:9.0f} req/s"
            if variant in ("leza", "floor"):
                stored = stored_events(db, "leza_access" if variant == "leza" else "floor_access")
                served_total[variant] += served
                stored_total[variant] += stored
                line += f"   served {served}, events stored {stored}"
            print(line, flush=True)

    print()
    for variant in variants:
        print(f"{variant:5s}  median: {statistics.median(results[variant]):9.0f} req/s")
    notes = {
        ("leza", "bare"): "   budget >= 0.80 (issue 17)",
        ("floor", "bare"): "   (the floor: every event stored, nothing else)",
        ("leza", "floor"): "   budget >= 0.95 (issue 17)",
        ("path", "bare"): "   (leza's request path alone: records built, then discarded)",
    }
    for (variant, base), note in notes.items():
        if variant not in chosen or base not in chosen:
            continue
        ratio = statistics.median(results[variant]) / statistics.median(results[base])
        per_round = [v / b for b, v in zip(results[base], results[variant], strict=True)]
        print(f"ratio {variant}/{base}: {ratio:.3f}  (per round: "
              f"{', '.join(f'{r:.3f}' for r in per_round)}){note}")  # fmt: skip
    for variant, threads in cpu_per_request.items():
        parts = ", ".join(
            f"{name} {statistics.median(v):.1f}" for name, v in sorted(threads.items())
        )
        print(f"server CPU µs per request, {variant}: {parts}")
    print("garbage collector during the measured runs (median of rounds; every thread):")
    for v in variants:
        runs = gc_runs[v]
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0] if k != "full_ms"}
        full = ", ".join(f"{run['full_per_10s']:.1f}" for run in runs)
        ms = [run["full_ms"] for run in runs if "full_ms" in run]
        print(
            f"  {v:5s}: {med['us']:5.2f} µs per request; collections per 10k requests "
            f"gen0 {med['gen0']:.1f}, gen1 {med['gen1']:.1f}, gen2 {med['gen2']:.2f}; "
            f"full collections per 10 s {med['full_per_10s']:.1f} (rounds: {full})"
            + (f", {statistics.median(ms):.0f} ms CPU each" if ms else "")
            + ("   budget <= 1 (issue 17)" if v == "leza" else "")
        )
    for variant in ("floor", "leza"):
        if variant not in chosen:
            continue
        stored, served = stored_total[variant], served_total[variant]
        print(
            f"events stored / requests served ({variant} rounds): {stored} / {served}"
            f"  {'EXACT' if stored == served else 'MISMATCH'}"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
