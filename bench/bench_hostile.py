"""Huge hostile header values: what a 100 KB value costs, where it is paid.

    python bench/bench_hostile.py [--repeats N]

Per 100 KB value (User-Agent, X-Forwarded-For, Forwarded, path, query,
Cookie), median and p95 in ms over ``--repeats`` runs, each with a value never
seen before (every cache misses):

- request path: what ``LezaMiddleware`` adds to a trivial ASGI app's request
  carrying that value (the bare app's time subtracted);
- enrich: the recorder turning the raw record into an event
  (``Leza._prepare_batch`` of one record: IP walk, UA parse, redaction,
  cleaning), from a trusted proxy so the forwarding headers are walked.

Then the 100 KB User-Agent alone: ``UserAgentParser.parse`` cold, and end to
end (request served, recorder woken, event written to SQLite, ``flush()``
returned).

Budget (issue 8): a 100 KB User-Agent handled in <= 10 ms. No asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_inprocess import http_scope, receive, send

from leza_middleware import Leza, LezaMiddleware
from leza_middleware.enrich.useragent import UserAgentParser
from leza_middleware.request_path import raw_access

KB100 = 100 * 1024
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 "
)


def _fill(head: str, piece: str, size: int = KB100) -> str:
    return (head + piece * (size // len(piece) + 1))[:size]


def values(i: int) -> dict[str, dict[str, Any]]:
    """One fresh 100 KB value per kind (``i`` makes it unseen), as scope and raw record parts."""
    tag = f"{i:08d}"
    ua = _fill(f"{CHROME}{tag} ", "(compatible; x) ")
    xff = _fill(f"{tag}, ", "10.0.0.1, ")  # trusted hops all the way: the longest walk
    fwd = _fill(f"for={tag};", 'for="[2001:db8::1]:80";proto=https, ')
    path = _fill(f"/{tag}/", "a%2Fb/")
    query = _fill(f"q={tag}", "&a=1&token=x")
    cookie = _fill(f"c={tag}; ", "leza_sid=0123456789abcdef0123; x=y; ")
    return {
        "User-Agent": {"header": (b"user-agent", ua.encode()), "raw": {"user_agent": ua.encode()}},
        "X-Forwarded-For": {
            "header": (b"x-forwarded-for", xff.encode()),
            "raw": {"x_forwarded_for": xff.encode()},
        },
        "Forwarded": {"header": (b"forwarded", fwd.encode()), "raw": {"forwarded": fwd.encode()}},
        "path": {"scope": {"path": path, "raw_path": path.encode()}, "raw": {"path": path}},
        "query": {"scope": {"query_string": query.encode()}, "raw": {"query": query.encode()}},
        "Cookie": {"header": (b"cookie", cookie.encode()), "raw": {}},
    }


def scope(extra: dict[str, Any]) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")]
    if "header" in extra:
        headers.append(extra["header"])
    return http_scope(headers, **extra.get("scope", {}))


async def _serve(app: Any, value: dict[str, Any], times: int) -> None:
    for _ in range(times):
        await app(scope(value), receive, send)


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _ms(samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return f"median {statistics.median(samples) * 1000:6.3f} ms, p95 {p95 * 1000:6.3f} ms"


def _timed(fn: Callable[[], Any]) -> float:
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    n = args.repeats

    with tempfile.TemporaryDirectory() as tmp:
        leza = Leza(
            storage=f"sqlite:///{Path(tmp) / 'hostile.db'}",
            trusted_proxies=["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"],
            spill_dir=str(Path(tmp) / "spill"),
            flush_interval=3600,  # the worker only runs when flushed: nothing else is timed
            secret_key="bench-secret-key-0123456789abcdef",
        )
        wrapped = LezaMiddleware(hello, leza=leza)
        UserAgentParser().parse(CHROME)  # build the resolver once, off the clock
        warm = raw_access(ts=time.time(), request_id="r0", user_agent=CHROME.encode())
        leza._prepare_batch([warm])
        loop = asyncio.new_event_loop()

        print(f"100 KB hostile values, {n} runs each, every value unseen (caches miss)")
        for kind in values(0):
            path_t: list[float] = []
            enrich_t: list[float] = []
            for i in range(1, n + 1):
                v = values(i)[kind]
                # request path: 20 requests per sample, one event loop turn (its own
                # overhead would drown a few µs)
                bare = _timed(lambda v=v: loop.run_until_complete(_serve(hello, v, 20))) / 20
                full = _timed(lambda v=v: loop.run_until_complete(_serve(wrapped, v, 20))) / 20
                path_t.append(max(0.0, full - bare))
                raw = raw_access(ts=time.time(), request_id=f"r{i}", peer="127.0.0.1", **v["raw"])
                enrich_t.append(_timed(lambda raw=raw: leza._prepare_batch([raw])))
                leza.flush(30)
            print(f"  {kind:16s} request path {_ms(path_t)} | enrich {_ms(enrich_t)}")
        print("  (request path: what the middleware adds; the 5 µs budget is for normal requests)")

        parse_t = []
        for i in range(1, n + 1):
            ua = values(i)["User-Agent"]["raw"]["user_agent"].decode()
            fresh = UserAgentParser()
            parse_t.append(_timed(lambda fresh=fresh, ua=ua: fresh.parse(ua)))
        print(f"100 KB User-Agent, UserAgentParser.parse cold: {_ms(parse_t)}  (budget <= 10 ms)")

        e2e_t = []
        for i in range(n + 1, 2 * n + 1):
            s = scope(values(i)["User-Agent"])

            def one(s: dict[str, Any] = s) -> None:
                loop.run_until_complete(wrapped(s, receive, send))
                assert leza.flush(30)

            e2e_t.append(_timed(one))
        stored = leza.query.access(limit=1)[0]["user_agent"]
        print(
            f"100 KB User-Agent, request to row in SQLite: {_ms(e2e_t)}  (budget <= 10 ms; "
            f"stored {len(stored)} characters)"
        )
        loop.close()
        leza.shutdown(5)


if __name__ == "__main__":
    main()
