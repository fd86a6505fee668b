"""Peers, side by side: LezaMiddleware vs the floor vs starlette-exporter vs
OpenTelemetry's ASGI instrumentation vs asgi-correlation-id, on the same
Starlette hello-world and the same load.

Variants (each added with ``app.add_middleware`` to the same Starlette app):

* ``bare``: the hello-world alone;
* ``floor``: bench/floor_middleware.py, the least a middleware can do and still
  store every request, device and place in SQLite (see bench_throughput.py);
* ``leza``: LezaMiddleware, every event enriched and written to SQLite;
* ``exporter``: starlette-exporter's ``PrometheusMiddleware`` (request counts
  and latency histograms per route, kept in memory: nothing stored per event);
* ``otel``: OpenTelemetry's ``OpenTelemetryMiddleware`` (its defaults: a server
  span plus internal spans for the ASGI send/receive calls) with a
  ``TracerProvider`` and a ``BatchSpanProcessor`` whose exporter drops the
  batches: the spans are built, queued and batched by the processor's thread,
  only the serialisation and network send of a real exporter are missing (so
  this is a lower bound of OpenTelemetry's cost);
* ``correlation``: asgi-correlation-id's ``CorrelationIdMiddleware`` (a request
  id per request in a context variable and a response header).

Two measurements:

1. throughput, as bench/bench_throughput.py (whose helpers this reuses):
   uvicorn with one worker, wrk over loopback with rotating real User-Agents
   and client IPs (X-Forwarded-For from a trusted loopback proxy), rounds
   alternating the variants so drift affects all alike; median req/s per
   variant and its ratio to ``bare``;
2. in-process CPU per request, as bench/bench_inprocess.py: each app called
   directly with prepared ASGI scopes, variants interleaved, median over many
   repeats. ``request path`` is the time added on the event loop (background
   threads held off during the timed loop, then drained); ``all threads`` is
   the process CPU added per request including the background work (Leza's
   recorder: enrichment + SQLite write; OpenTelemetry's batch processor).

    python bench/bench_peers.py [--rounds 3] [--duration 5] [--connections 64] [--pin]

Needs: wrk (Debian package), uvicorn, opentelemetry-sdk,
opentelemetry-instrumentation-asgi, asgi-correlation-id, starlette-exporter.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_throughput import (  # noqa: E402 - after the path tweak
    WRK_LUA,
    geoip_db,
    lua_list,
    real_ips,
    real_uas,
    run_wrk,
    start_server,
    stop_server,
    stored_events,
)

VARIANTS = ("bare", "floor", "leza", "exporter", "otel", "correlation")
LABELS = {
    "bare": "bare Starlette hello-world",
    "floor": "+ the floor (floor_middleware.py: SQLite, every event)",
    "leza": "+ LezaMiddleware (SQLite, every event)",
    "exporter": "+ starlette-exporter (Prometheus metrics)",
    "otel": "+ OpenTelemetry ASGI, BatchSpanProcessor",
    "correlation": "+ asgi-correlation-id",
}

# The served app: bench_throughput.start_server runs `uvicorn benchapp:app` with
# BENCH_VARIANT and BENCH_COUNT_FILE set, LEZA_* configuring Leza.
APP = textwrap.dedent(
    """
    import os
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request):
        return PlainTextResponse("Hello, world!")

    inner = Starlette(routes=[Route("/", hello)])
    variant = os.environ["BENCH_VARIANT"]

    if variant == "leza":
        from leza_middleware import Leza, LezaMiddleware
        leza = Leza(trusted_proxies=["127.0.0.1"])   # storage, geo from LEZA_* env
        inner.add_middleware(LezaMiddleware, leza=leza)
    elif variant == "floor":
        from benchfloor import Floor
        inner = Floor(inner, os.environ["LEZA_STORAGE"].removeprefix("sqlite:///"),
                      os.environ["LEZA_GEOIP_DB"])
    elif variant == "exporter":
        from starlette_exporter import PrometheusMiddleware
        inner.add_middleware(PrometheusMiddleware)
    elif variant == "otel":
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor, SpanExporter, SpanExportResult,
        )

        class DropExporter(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(DropExporter()))
        inner.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)
    elif variant == "correlation":
        from asgi_correlation_id import CorrelationIdMiddleware
        inner.add_middleware(CorrelationIdMiddleware)

    served = 0

    async def app(scope, receive, send):
        # Outermost counter (same in every variant): requests answered.
        global served
        if scope["type"] == "lifespan":
            async def send_wrapper(message):
                if message["type"] == "lifespan.shutdown.complete":
                    if variant == "otel":
                        provider.shutdown()
                    with open(os.environ["BENCH_COUNT_FILE"], "w") as f:
                        f.write(str(served))
                await send(message)
            return await inner(scope, receive, send_wrapper)
        await inner(scope, receive, send)
        served += 1
    """
)


# ----------------------------------------------------------------------------- throughput


def throughput(args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    ncpu = os.cpu_count() or 1
    server_cpu, wrk_cpu = (0, (1 if ncpu > 1 else 0)) if args.pin else (-1, -1)
    (work / "benchapp.py").write_text(APP)
    shutil.copy(HERE / "floor_middleware.py", work / "benchfloor.py")
    uas, ips = real_uas(300), real_ips(500)
    script = work / "rotate.lua"
    script.write_text(WRK_LUA.format(UAS=lua_list(uas), IPS=lua_list(ips)))
    placement = (
        f"uvicorn pinned to CPU {server_cpu}, wrk to CPU {wrk_cpu}"
        if args.pin
        else f"uvicorn (1 worker) and wrk (1 thread) scheduled freely on {ncpu} CPUs"
    )
    print(f"# throughput: {len(uas)} distinct UAs, {len(ips)} distinct IPs, geo: {geoip_db()}")
    print(f"# {placement}; {args.rounds} rounds x {args.duration}s, {args.connections} connections")
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rnd in range(args.rounds):
        # Rotate the order too, so no variant always runs first in a round.
        order = VARIANTS[rnd % len(VARIANTS) :] + VARIANTS[: rnd % len(VARIANTS)]
        for variant in order:
            db = work / f"leza-{rnd}-{variant}.db"
            proc, port, count_file = start_server(work, variant, server_cpu, db)
            try:
                run_wrk(port, script, args.warmup, args.connections, wrk_cpu)
                rps, _ = run_wrk(port, script, args.duration, args.connections, wrk_cpu)
            finally:
                served = stop_server(proc, count_file)
            results[variant].append(rps)
            line = f"round {rnd + 1} {variant:11s}: {rps:9.0f} req/s"
            if variant in ("leza", "floor"):
                stored = stored_events(db, "leza_access" if variant == "leza" else "floor_access")
                exact = "exact" if stored == served else "MISMATCH"
                line += f"   served {served}, events stored {stored} ({exact})"
            print(line, flush=True)
    return results


# ----------------------------------------------------------------------------- in-process

from bench_inprocess import receive, scope, send  # noqa: E402 - the same request

Drain = Callable[[], None]


def build_apps(tmp: Path) -> tuple[dict[str, Any], dict[str, Drain], Drain]:
    """The four apps, a drain function per variant (background work, untimed
    for ``request path``) and a close function."""
    from asgi_correlation_id import CorrelationIdMiddleware
    from floor_middleware import Floor
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette_exporter import PrometheusMiddleware

    from leza_middleware import Leza, LezaMiddleware

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("Hello, world!")

    def starlette() -> Starlette:
        return Starlette(routes=[Route("/", hello)])

    class DropExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    bare = starlette()
    # Background threads wake only when drained (between timed loops), so the
    # request path is timed alone; "all threads" adds the drain's CPU.
    leza = Leza(
        storage=f"sqlite:///{tmp / 'inprocess.db'}",
        trusted_proxies=["127.0.0.1"],
        geoip_db=geoip_db(),
        secret_key="bench-secret-key-0123456789",
        spill_dir=str(tmp / "spill"),
        flush_interval=3600,
        batch_size=100_000,
        queue_size=100_000,
    )
    with_leza = starlette()
    with_leza.add_middleware(LezaMiddleware, leza=leza)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(
            DropExporter(),
            max_queue_size=100_000,
            max_export_batch_size=100_000,
            schedule_delay_millis=3_600_000,
        )
    )
    with_otel = starlette()
    with_otel.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)
    with_correlation = starlette()
    with_correlation.add_middleware(CorrelationIdMiddleware)
    with_exporter = starlette()
    with_exporter.add_middleware(PrometheusMiddleware)
    floor = Floor(starlette(), str(tmp / "floor.db"), geoip_db())

    apps = {
        "bare": bare,
        "floor": floor,
        "leza": with_leza,
        "exporter": with_exporter,
        "otel": with_otel,
        "correlation": with_correlation,
    }
    drains: dict[str, Drain] = {
        "bare": lambda: None,
        "floor": floor.flush,
        "exporter": lambda: None,
        "leza": lambda: None if leza.flush(60) else print("leza flush timed out"),
        "otel": lambda: None if provider.force_flush(60_000) else print("otel flush timed out"),
        "correlation": lambda: None,
    }

    def close() -> None:
        floor.stop()
        leza.shutdown(10)
        provider.shutdown()

    return apps, drains, close


def in_process(repeats: int, n: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median µs per request: (request path wall time, process CPU incl. background)."""
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    scopes = [scope(i) for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="leza-peers-") as tmp:
        apps, drains, close = build_apps(Path(tmp))

        async def run() -> None:
            for variant in VARIANTS:  # warm caches, connections, tables
                for s in scopes[:200]:
                    await apps[variant](s, receive, send)
                drains[variant]()
            for rnd in range(repeats):
                order = VARIANTS[rnd % len(VARIANTS) :] + VARIANTS[: rnd % len(VARIANTS)]
                for variant in order:
                    app = apps[variant]
                    gc.disable()
                    c0 = time.process_time_ns()
                    t0 = time.perf_counter_ns()
                    for s in scopes:
                        await app(s, receive, send)
                    t1 = time.perf_counter_ns()
                    gc.enable()
                    drains[variant]()
                    c1 = time.process_time_ns()
                    wall[variant].append((t1 - t0) / n / 1000)
                    cpu[variant].append((c1 - c0) / n / 1000)

        try:
            asyncio.run(run())
        finally:
            close()
    return (
        {v: statistics.median(x) for v, x in wall.items()},
        {v: statistics.median(x) for v, x in cpu.items()},
    )


# ----------------------------------------------------------------------------- report


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for dist in (
        "starlette", "uvicorn", "opentelemetry-sdk", "asgi-correlation-id", "starlette-exporter",
    ):  # fmt: skip
        try:
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
        except Exception:
            versions.append(f"{dist} ?")
    return (
        f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        + ", ".join(versions)
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=21, help="in-process repeats per variant")
    ap.add_argument("--requests", type=int, default=2000, help="in-process requests per repeat")
    ap.add_argument("--pin", action="store_true", help="pin uvicorn to CPU 0 and wrk to CPU 1")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    if not args.skip_throughput and shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk (or --skip-throughput)", file=sys.stderr)
        return 2
    print(f"# {date.today().isoformat()}: {machine()}")

    rps: dict[str, list[float]] = {}
    if not args.skip_throughput:
        work = Path(tempfile.mkdtemp(prefix="leza-peers-"))
        try:
            rps = throughput(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"# in-process: {args.repeats} repeats x {args.requests} requests per variant")
    wall, cpu = in_process(args.repeats, args.requests)

    print()
    print(
        "| variant | req/s (median) | x bare | µs/request added, request path "
        "| µs/request added, all threads |"
    )
    print("|---|---:|---:|---:|---:|")
    bare_rps = statistics.median(rps["bare"]) if rps else 0.0
    for v in VARIANTS:
        if rps:
            med = statistics.median(rps[v])
            rate, ratio = f"{med:,.0f}", f"{med / bare_rps:.2f}"
        else:
            rate = ratio = "n/a"
        if v == "bare":
            added_wall = f"({wall[v]:.1f} µs/request)"
            added_cpu = f"({cpu[v]:.1f} µs/request)"
        else:
            added_wall = f"{wall[v] - wall['bare']:+.1f}"
            added_cpu = f"{cpu[v] - cpu['bare']:+.1f}"
        print(f"| {LABELS[v]} | {rate} | {ratio} | {added_wall} | {added_cpu} |")
    if rps:
        print()
        for v in VARIANTS:
            print(f"{v:11s} per round: " + ", ".join(f"{x:,.0f}" for x in rps[v]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
