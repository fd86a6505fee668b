"""In-process costs, side by side in one run:

1. request path: thread CPU µs added per request by LezaMiddleware around a
   trivial ASGI app (median over many repeats of a wrapped block minus the bare
   block beside it, the order alternating, the queue drained between repeats
   so it never fills), for an anonymous client and for a signed-in browser
   (machine and session cookies: the revocation check's fast path), and
   around a Starlette hello-world;
2. recorder, per event: enrichment (UA/geo/IP caches warm, like steady
   traffic) and the SQLite batch write, µs each;
3. recorder enrichment with query strings: a realistic mix repeating (the
   per-query cache warm) and every query distinct (secret redaction runs for
   every event: plain keys, bracketed keys, a URL-valued parameter).

    python bench/bench_inprocess.py
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from leza_middleware import Leza, LezaMiddleware
from leza_middleware.events import Event

UAS = [
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36",
    b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    b"(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]
IPS = [b"81.2.69.142", b"193.0.6.139", b"203.2.218.214", b"89.160.20.112"]


def http_scope(headers: list[tuple[bytes, bytes]], **overrides: Any) -> dict[str, Any]:
    """An HTTP scope as uvicorn builds it for ``GET /`` (the benches' shared shape)."""
    s: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    s.update(overrides)
    return s


def scope(i: int, cookie: bytes | None = None) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", UAS[i % len(UAS)]),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", IPS[i % len(IPS)]),
    ]
    if cookie is not None:
        headers.append((b"cookie", cookie))
    return http_scope(headers)


def browser_cookie(leza: Leza, i: int) -> bytes:
    """A signed-in browser's Cookie header: a valid machine id and a session key."""
    _, mid = leza.cookies.new_machine_value()
    return b"leza_mid=%s; leza_sid=bench-session-key-%06d" % (mid.encode(), i)


START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
BODY = {"type": "http.response.body", "body": b"Hello, world!"}


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send(dict(START))
    await send(BODY)


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


async def per_request_us(app: Any, scopes: list[dict[str, Any]]) -> float:
    """Thread CPU µs per request: the time this thread ran, not the wall clock, so
    another process taking the CPU mid-loop (a shared machine) is not counted."""
    t0 = time.thread_time_ns()
    for s in scopes:
        await app(s, receive, send)
    return (time.thread_time_ns() - t0) / len(scopes) / 1000


def request_path(
    leza: Leza,
    repeats: int = 61,
    n: int = 1000,
    cookies: bool = False,
    bare_app: Any = hello,
    wrapped: Any = None,
) -> tuple[float, float]:
    """(bare µs, µs added) per request: the median over ``repeats`` of the
    difference between a wrapped block and the bare block right before or after
    it (the order alternates), so the machine's drift cancels out pairwise."""
    if wrapped is None:
        wrapped = LezaMiddleware(bare_app, leza=leza)
    # 50 browsers, each sending its own cookies request after request.
    jar = [browser_cookie(leza, k) for k in range(50)] if cookies else None
    scopes = [scope(i, None if jar is None else jar[i % len(jar)]) for i in range(n)]
    bare_t, added = [], []

    async def run() -> None:
        for s in scopes[:200]:  # warm up both
            await bare_app(dict(s), receive, send)
            await wrapped(dict(s), receive, send)
        leza.flush(30)
        for r in range(repeats):
            # Fresh scopes each time, as a server builds one per request (an app
            # such as Starlette's router writes into it).
            a, b = [dict(s) for s in scopes], [dict(s) for s in scopes]
            gc.disable()
            if r % 2:
                w = await per_request_us(wrapped, a)
                t = await per_request_us(bare_app, b)
            else:
                t = await per_request_us(bare_app, a)
                w = await per_request_us(wrapped, b)
            gc.enable()
            bare_t.append(t)
            added.append(w - t)
            leza.flush(30)  # drain outside the timed part

    asyncio.run(run())
    return statistics.median(bare_t), statistics.median(added)


def starlette_pair(leza: Leza) -> tuple[Any, Any]:
    """A Starlette hello-world and the same app wrapped (as bench_throughput.py runs them)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("Hello, world!")

    def app() -> Starlette:
        return Starlette(routes=[Route("/", home)])

    return app(), LezaMiddleware(app(), leza=leza)


def revocation_check(leza: Leza, n: int = 200_000, repeats: int = 21) -> tuple[float, float]:
    """µs per ``Sessions.refusal(sid)`` once the blocklist is loaded (the fast path
    every cookie-bearing request takes), and per bare ``sid in set`` for scale."""
    sessions = leza.sessions
    sessions.refusal("warm-up: loads the blocklist once")
    sids = [f"{i:032x}" for i in range(1000)]
    blocked = sessions.blocked
    blocked.update(sids[::2])
    refusal = sessions.refusal
    check_t, bare_t = [], []
    for _ in range(repeats):
        gc.disable()
        t0 = time.perf_counter_ns()
        for i in range(n):
            refusal(sids[i % 1000])
        check_t.append((time.perf_counter_ns() - t0) / n / 1000)
        t0 = time.perf_counter_ns()
        for i in range(n):
            sids[i % 1000] in blocked  # noqa: B015
        bare_t.append((time.perf_counter_ns() - t0) / n / 1000)
        gc.enable()
    return statistics.median(check_t), statistics.median(bare_t)


# Steady traffic: a few distinct query strings, some carrying secrets.
QUERY_MIX = [
    b"",
    b"page=2&sort=name",
    b"q=hello%20world&page=1",
    b"access_token=abc123&page=3",
    b"user[password]=hunter2&user[name]=al",
    b"next=%2Fcb%3Ftoken%3Dabc",
    b"utm_source=news&utm_medium=email&utm_campaign=spring",
    b"redirect_uri=https%3A%2F%2Fapp.example%2Fcb&state=xyz",
]


def distinct_query(i: int) -> bytes:
    """Every query new (cache misses): plain pairs, bracketed keys, a nested URL."""
    return [
        b"page=%d&sort=name&dir=asc" % i,
        b"filter[status]=open&filter[id]=%d" % i,
        b"next=https%%3A%%2F%%2Fapp.example%%2Fitems%%3Fid%%3D%d" % i,
    ][i % 3]


def recorder_costs(
    leza: Leza, n: int = 20_000, query: Any = None, write: bool = True
) -> tuple[float, float]:
    from leza_middleware.request_path import raw_access

    now = time.time()
    raws = [
        raw_access(
            ts=now + i * 1e-4,
            duration=0.0001,
            request_id=f"{i:032x}",
            peer="127.0.0.1",
            user_agent=UAS[i % len(UAS)],
            x_forwarded_for=IPS[i % len(IPS)],
            host=b"127.0.0.1:8000",
            route="/",
            query=b"" if query is None else query(i),
        )
        for i in range(n)
    ]
    prep = leza._prepare_batch
    prep(raws[:100])  # warm the caches like steady traffic
    # In batches, as the recorder does (one huge list would add GC work it never has).
    events: list[Event] = []
    t0 = time.perf_counter_ns()
    for k in range(0, n, leza.settings.batch_size):
        events += prep(raws[k : k + leza.settings.batch_size])
    enrich_us = (time.perf_counter_ns() - t0) / n / 1000
    if not write:
        return enrich_us, 0.0
    storage = leza.storage
    storage.setup()
    batch = leza.settings.batch_size
    t0 = time.perf_counter_ns()
    for k in range(0, n, batch):
        storage.write(events[k : k + batch])
    write_us = (time.perf_counter_ns() - t0) / n / 1000
    return enrich_us, write_us


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        # The worker must not wake during the timed loops (it would take the
        # GIL and inflate them): it only runs in the flush between repeats.
        leza = Leza(
            storage=f"sqlite:///{db}",
            trusted_proxies=["127.0.0.1"],
            spill_dir=str(Path(tmp) / "spill"),
            flush_interval=3600,
            batch_size=100_000,
            queue_size=100_000,
        )
        bare, added = request_path(leza)
        print(
            f"request path (thread CPU): bare app {bare:.2f} µs/request, LezaMiddleware"
            f" adds {added:.2f} µs  (budget <= 3 µs)"
        )
        bare, added = request_path(leza, cookies=True)
        print(
            f"request path, signed-in browser (machine + session cookies, revocation check):"
            f" bare app {bare:.2f} µs/request, LezaMiddleware adds {added:.2f} µs"
        )
        app, wrapped = starlette_pair(leza)
        bare, added = request_path(leza, bare_app=app, wrapped=wrapped)
        print(
            f"request path around a Starlette hello-world: bare app {bare:.2f} µs/request,"
            f" LezaMiddleware adds {added:.2f} µs"
        )
        check, bare_lookup = revocation_check(leza)
        print(
            f"revocation check (Sessions.refusal, blocklist loaded): {check:.3f} µs per call"
            f" (a bare set lookup in the same loop: {bare_lookup:.3f} µs)"
        )
        leza2 = Leza(
            storage=f"sqlite:///{Path(tmp) / 'rec.db'}",
            trusted_proxies=["127.0.0.1"],
            spill_dir=str(Path(tmp) / "spill2"),
        )
        enrich, write = recorder_costs(leza2)
        print(
            f"recorder per event: enrich {enrich:.2f} µs + SQLite write {write:.2f} µs"
            f" = {enrich + write:.2f} µs  ({1e6 / write:,.0f} events/s write rate)"
        )
        mix, _ = recorder_costs(leza2, query=lambda i: QUERY_MIX[i % len(QUERY_MIX)], write=False)
        cold, _ = recorder_costs(leza2, query=distinct_query, write=False)
        print(
            f"recorder enrich with queries: {mix:.2f} µs (repeating mix), "
            f"{cold:.2f} µs (every query distinct)"
        )
        leza.shutdown(5)
        leza2.shutdown(5)


if __name__ == "__main__":
    main()
