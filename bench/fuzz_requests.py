"""Fuzz harness: many random hostile requests through both middlewares into SQLite.

    python bench/fuzz_requests.py [--requests 20000] [--seed 1] [--keep DB]

Every request is built by ``random`` (seeded: a run can be repeated) from a
grammar of hostile pieces: raw paths with invalid UTF-8, %-garbage and NULs,
queries with secrets and control bytes, up to 60 headers (duplicated,
non-ASCII, CR/LF, NUL, up to 100 KB), X-Forwarded-For / Forwarded chains of up
to 200 hops mixing IPv4, IPv6 with zone ids, brackets, ports and junk,
``client=None`` / ``("", 0)``, missing ``server``, odd schemes and versions;
for WSGI the same as a PEP 3333 latin-1 environ (sometimes a non-conforming
one with real text or surrogates), missing ``REMOTE_ADDR``. Half the requests
go through ``LezaMiddleware``, half through ``LezaWSGIMiddleware``; the apps
sometimes fail on purpose (before the response, mid-body, in ``close()``).

It prints, and exits 1 unless the must-be-zero counts are 0 and every
request was stored:

- requests, and how many the app failed on purpose;
- exceptions escaped: anything reaching the server that the app did not raise;
- responses altered: status, app headers or body not as the app sent them;
- close() not once: a WSGI app iterable closed 0 or 2+ times;
- events stored (== requests), ``leza.stats()`` books balanced;
- control characters found: stored text (every text column of every leza_*
  table, JSON inside them too) holding U+0000-U+001F, U+007F-U+009F,
  U+2028/U+2029, or invalid UTF-8;
- elapsed time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from leza_middleware import Leza, LezaMiddleware, LezaWSGIMiddleware

FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
TRUSTED = ["10.0.0.0/8", "127.0.0.1", "fe80::/10", "2001:db8::/32"]
ADDED = {"x-request-id", "set-cookie"}  # the only response headers the middleware adds


class AppError(Exception):
    """Raised by the apps on purpose: the one exception allowed to reach the server."""


# -- the grammar ------------------------------------------------------------------------------

BYTE_PIECES = [
    b"\r\n", b"\n", b"\r", b"\x00", b"\t", b"\x1b[31m", b"\x7f", b"\x85", b"\x9b", b"\xc3\xa9",
    b"\xc3\x28", b"\xff\xfe", b"\xed\xa0\x80", b"\xe2\x80\xa8", b"%00", b"%zz", b"%", b"\\",
    b'"', b";", b",", b"=", b" ",
]  # fmt: skip
PATH_PIECES = [
    b"/", b"/", b"a", b"%", b"%zz", b"%c3%28", b"%ff", b"%00", b"%0d%0a", b"\xff", b"\xc3\x28",
    b"\xed\xa0\x80", b"\r\n", b"\x1b[31m", b"..", b"%e2%80%a8", b"\xc2\x85", b"items", b"42",
]  # fmt: skip
QUERY_PIECES = [
    b"&", b"=", b"%", b"%zz", b"%00", b"\x00", b"a=%ff%fe", b"\r\n", b"+", b"token=abc",
    b"password=hunter2", b"pass\x00word=hunter2", b"&x-api-key=k", b"\x85", b"q=1",
]  # fmt: skip
IPV4 = ["81.2.69.142", "161.35.214.167", "10.1.2.3", "127.0.0.1", "203.0.113.9", "9.9.9.9"]
IPV6 = [
    "2001:480:10::1", "::1", "::", "fe80::1", "2001:db8::7", "::ffff:81.2.69.142",
    "::ffff:10.0.0.1", "1::2::3", "gggg::1", "fe80::",
]  # fmt: skip
ZONES = ["", "", "", "%eth0", "%25eth0", "%", "%0", "%lo\x00", "%\r\n", "%é"]
JUNK_HOPS = [
    "unknown", "_hidden", "_obf\r\nX: y", "161.35.614.165", "", " ", '"', "[", "]:80",
    '"[2001:db8::1]:4711"', "1.2.3.4\x00", "\x1b[31m10.0.0.1", "\u2028",
    "\u0295\u2022\u1d25\u2022\u0294",  # non-ASCII letters and symbols
]  # fmt: skip
HEADER_NAMES = [
    b"user-agent", b"x-forwarded-for", b"forwarded", b"host", b"accept", b"cookie", b"x-user",
    b"x-org", b"x-request-id", b"traceparent", b"content-type", b"referer",
]  # fmt: skip


class Grammar:
    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def junk(self, n: int = 8) -> bytes:
        r = self.r
        return b"".join(
            r.choice(BYTE_PIECES) if r.random() < 0.5 else r.randbytes(r.randint(0, 4))
            for _ in range(r.randint(0, n))
        )

    def hop(self) -> str:
        r = self.r
        k = r.randrange(8)
        if k == 0:
            return f"{r.randint(0, 300)}.{r.randint(0, 300)}.{r.randint(0, 255)}.{r.randint(0, 9)}"
        if k == 1:
            return f"{r.choice(IPV4)}:{r.randint(0, 70000)}"
        if k == 2:
            return r.choice(IPV6) + r.choice(ZONES)
        if k == 3:
            return f"[{r.choice(IPV6)}{r.choice(ZONES)}]:{r.randint(0, 70000)}"
        if k == 4:
            return r.choice(JUNK_HOPS)
        if k == 5:
            return self.junk(3).decode("latin-1")
        return r.choice(IPV4)

    def xff(self) -> bytes:
        r = self.r
        hops = [self.hop() for _ in range(r.choice([0, 1, 2, 3, 5, 10, 70, 200]))]
        return r.choice([",", ", ", " , ", ",,", ",\t"]).join(hops).encode("utf-8", "surrogatepass")

    def forwarded(self) -> bytes:
        r = self.r
        elements = []
        for _ in range(r.choice([0, 1, 2, 4, 70])):
            pairs = []
            for key in r.sample(["for", "For", "by", "proto", "host", "x"], r.randint(0, 3)):
                value = self.hop()
                pairs.append(f'{key}="{value}"' if r.random() < 0.5 else f"{key}={value}")
            elements.append(";".join(pairs))
        text = ", ".join(elements)
        if r.random() < 0.25:
            text = self.junk(3).decode("latin-1") + text
        return text.encode("utf-8", "surrogatepass")

    def value(self, name: bytes) -> bytes:
        r = self.r
        if r.random() < 0.03:  # huge: up to 100 KB
            piece = self.junk(2) or b"A"
            return (piece * (102_400 // len(piece) + 1))[: r.randint(1_000, 102_400)]
        if name == b"x-forwarded-for":
            return self.xff()
        if name == b"forwarded":
            return self.forwarded()
        if name == b"user-agent" and r.random() < 0.5:
            return b"Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 " + self.junk(4)
        if name in (b"x-request-id", b"traceparent") and r.random() < 0.5:
            return r.choice(
                [
                    b"req-0123456789abcdef",
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ]
            )
        if name == b"x-user" and r.random() < 0.7:
            return r.choice([b"alice", b"b\xc3\xb6b\r\n", b"\x85eve", b""])
        return self.junk()

    def headers(self) -> list[tuple[bytes, bytes]]:
        r = self.r
        out = []
        for _ in range(r.choice([0, 1, 3, 6, 10, 60])):
            # mostly known names; else any bytes, even non-ASCII or upper-case
            name = r.choice(HEADER_NAMES) if r.random() < 0.85 else r.randbytes(r.randint(1, 10))
            out.append((name, self.value(name)))
        if out and r.random() < 0.3:  # duplicated lines
            out += r.choices(out, k=r.randint(1, 3))
        return out

    def raw_path(self) -> bytes:
        r = self.r
        return b"/" + b"".join(
            r.choice(PATH_PIECES) if r.random() < 0.7 else r.randbytes(r.randint(0, 4))
            for _ in range(r.randint(0, 12))
        )

    def decoded_path(self, raw: bytes) -> str:
        k = self.r.randrange(5)  # how servers turn the raw path into text
        if k == 0:
            return unquote_to_bytes(raw).decode("utf-8", "replace")
        if k == 1:
            return unquote_to_bytes(raw).decode("utf-8", "surrogateescape")
        if k == 2:
            return raw.decode("utf-8", "surrogateescape")
        if k == 3:
            return unquote(raw.decode("latin-1"))
        return raw.decode("latin-1")

    def query(self) -> bytes:
        r = self.r
        return b"".join(
            r.choice(QUERY_PIECES) if r.random() < 0.6 else r.randbytes(r.randint(0, 4))
            for _ in range(r.randint(0, 10))
        )

    def method(self) -> str:
        r = self.r
        if r.random() < 0.9:
            return r.choice(["GET", "POST", "HEAD", "PATCH", "OPTIONS"])
        return r.choice(["", "G\r\nET", "ÄÖ", "\x00", "X" * 300])

    def scope(self) -> dict[str, Any]:
        r = self.r
        raw = self.raw_path()
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "method": self.method(),
            "path": self.decoded_path(raw),
            "raw_path": raw,
            "query_string": self.query(),
            "headers": self.headers(),
            "client": r.choice(
                [
                    None,
                    ("", 0),
                    ["10.0.0.1", 8080],
                    ("127.0.0.1", 1),
                    ("fe80::1%eth0", 2),
                    (self.hop(), r.randint(0, 65535)),
                    ("unix:/tmp/app.sock", None),
                ]
            ),
        }
        extras = {
            "scheme": ["http", "https", "HTTP", "", "h\r\nttps", "\udcff"],
            "http_version": ["1.0", "1.1", "2", "3", "0.9", "\x00"],
            "server": [None, ("testserver", 80), ("", None)],
            "root_path": ["", "/api", "/\udcff\r\n"],
        }
        for key, choices in extras.items():
            if r.random() < 0.8:  # else left out
                scope[key] = r.choice(choices)
        return scope

    def environ(self) -> dict[str, Any]:
        r = self.r
        odd = ["/é€", "/\udcff\udc80", "/\u2028x", "\U0001f600"]  # a non-conforming server

        def latin1(raw: bytes) -> str:
            return raw.decode("latin-1") if r.random() < 0.97 else r.choice(odd)

        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.method().encode("latin-1", "replace").decode("latin-1"),
            "SCRIPT_NAME": r.choice(["", "", "", "/app", "/\xc3\xa9", "/\r\n"]),
            "PATH_INFO": latin1(unquote_to_bytes(self.raw_path())),
            "QUERY_STRING": latin1(self.query()),
            "SERVER_NAME": "testserver",
            "SERVER_PORT": r.choice(["80", "", "x"]),
            "SERVER_PROTOCOL": r.choice(["HTTP/1.1", "HTTP/1.0", "HTTP/9", "", "\x00"]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": r.choice(["http", "https", "", "HTTP\r\n"]),
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if r.random() < 0.8:
            environ["REMOTE_ADDR"] = r.choice(["", "10.0.0.1", "127.0.0.1", self.hop()])
        for name, value in self.headers():
            try:
                key = "HTTP_" + name.decode("ascii").upper().replace("-", "_")
            except UnicodeDecodeError:
                continue
            text = latin1(value)
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        return environ


def performer_hook(request: Any) -> dict[str, Any] | None:
    """An identity built from client text, as some apps do (a user header, an org header)."""
    if isinstance(request, dict):  # the environ itself, when Werkzeug cannot read it
        return None
    user = request.headers.get("x-user")
    if not user:
        return None
    org = request.headers.get("x-org", "org")
    return {
        "id": user,
        "name": user,
        "organization_unit_labels": [org],
        "organizations": [{"id": org, "name": org, "labels": [org]}],
    }


# -- running requests -------------------------------------------------------------------------


class Counts:
    def __init__(self) -> None:
        self.requests = 0
        self.failed_on_purpose = 0
        self.escaped = 0
        self.altered = 0
        self.close_not_once = 0
        self.examples: list[str] = []

    def problem(self, what: str, detail: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(f"{what}: {detail[:300]}")


async def asgi_request(leza: Leza, scope: dict[str, Any], rng: random.Random, c: Counts) -> None:
    status = rng.choice([200, 204, 404, 500, 599])
    headers = [(b"content-type", b"text/plain")]
    if rng.random() < 0.2:
        headers.append((b"x-request-id", rng.choice([b"app-1", b"bad id\r\n"])))
    fail = rng.choice([None] * 6 + ["before_start", "after_start", "mid_body"])
    chunks = [rng.randbytes(rng.randint(0, 8)) for _ in range(rng.randint(1, 3))]
    error = AppError()
    sent: list[tuple[int, list[tuple[bytes, bytes]]] | bytes] = []
    got: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if fail == "before_start":
            raise error
        sent.append((status, list(headers)))
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        if fail == "after_start":
            raise error
        for i, chunk in enumerate(chunks):
            sent.append(chunk)
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i + 1 < len(chunks)}
            )
            if fail == "mid_body":
                raise error

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        got.append(message)

    try:
        await LezaMiddleware(app, leza=leza)(scope, receive, send)
    except AppError as exc:
        if exc is not error:
            c.escaped += 1
            c.problem("escaped", repr(exc))
        c.failed_on_purpose += 1
    except BaseException as exc:  # the harness wants to see it, whatever it is
        c.escaped += 1
        c.problem("escaped", f"{exc!r} for scope {scope!r}")
    if len(got) != len(sent):
        c.altered += 1
        c.problem("altered", f"{len(got)} messages for {len(sent)}")
        return
    for message, expected in zip(got, sent, strict=True):
        if isinstance(expected, bytes):
            ok = message.get("body") == expected
        else:
            n = len(expected[1])
            extra = {k.decode("latin-1") for k, _ in message["headers"][n:]}
            ok = (
                message["status"] == expected[0]
                and list(message["headers"][:n]) == expected[1]
                and extra <= ADDED
            )
        if not ok:
            c.altered += 1
            c.problem("altered", f"{message!r} for {expected!r}")
            return


class Body:
    def __init__(self, chunks: list[bytes], fail_at: int | None, error: AppError) -> None:
        self.chunks, self.fail_at, self.error = chunks, fail_at, error
        self.closed = 0
        self.close_fails = False

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise self.error
            yield chunk

    def close(self) -> None:
        self.closed += 1
        if self.close_fails:
            raise self.error


def wsgi_request(leza: Leza, environ: dict[str, Any], rng: random.Random, c: Counts) -> None:
    status = rng.choice(["200 OK", "404 Not Found", "500 Oops", "999 Odd", "abc"])
    headers = [("Content-Type", "text/plain")]
    if rng.random() < 0.2:
        headers.append(("X-Request-ID", rng.choice(["app-1", "bad id", "ünï€"])))
    kind = rng.choice(["list", "iter", "iter", "iter_fail", "call_fail", "exc_info", "close_fail"])
    chunks = [rng.randbytes(rng.randint(1, 8)) for _ in range(rng.randint(1, 3))]
    error = AppError()
    body: Body | None = None

    def app(environ: Any, start_response: Any) -> Any:
        nonlocal body
        if kind == "call_fail":
            raise error
        start_response(status, list(headers))
        if kind == "list":
            return list(chunks)
        if kind == "exc_info":  # fails before the body: an error page instead
            try:
                raise error
            except AppError:
                start_response("500 Internal Server Error", [], sys.exc_info())
            body = Body([b"error page"], None, error)
            return body
        body = Body(chunks, len(chunks) - 1 if kind == "iter_fail" else None, error)
        body.close_fails = kind == "close_fail"
        return body

    served: dict[str, Any] = {"status": None, "headers": [], "chunks": []}

    def start_response(status_: str, headers_: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is None and served["status"] is not None:
            raise AssertionError("start_response twice without exc_info")
        served["status"], served["headers"] = status_, list(headers_)
        return served["chunks"].append

    read = rng.choice([None, None, None, 1])
    raised: BaseException | None = None
    result = None
    try:
        result = LezaWSGIMiddleware(app, leza=leza)(environ, start_response)
        for i, chunk in enumerate(result):
            served["chunks"].append(chunk)
            if read is not None and i + 1 >= read:
                break
    except BaseException as exc:
        raised = exc
    finally:
        close = getattr(result, "close", None)
        for _ in range(rng.choice([1, 1, 2]) if close is not None else 0):
            try:
                close()  # type: ignore[misc]
            except BaseException as exc:
                raised = raised or exc
    if raised is not None:
        if raised is error:
            c.failed_on_purpose += 1
        else:
            c.escaped += 1
            c.problem("escaped", f"{raised!r} for environ {environ!r}")
    if body is not None and body.closed != 1:
        c.close_not_once += 1
        c.problem("close", f"closed {body.closed} times ({kind})")
    if kind in ("list", "iter", "close_fail"):
        n = len(headers)
        expected = chunks if read is None else chunks[:read]
        extra = {k.lower() for k, _ in served["headers"][n:]}
        if (
            served["status"] != status
            or served["headers"][:n] != headers
            or not extra <= ADDED
            or served["chunks"] != expected
        ):
            c.altered += 1
            c.problem("altered", f"{served!r} for {status!r} {headers!r} {chunks!r}")


def scan(db: Path) -> tuple[int, int, list[str]]:
    """(text values read, values with control characters or invalid UTF-8, examples)."""
    con = sqlite3.connect(db)
    con.text_factory = bytes
    seen = bad = 0
    examples: list[str] = []

    def check(value: Any, where: str) -> bool:
        if isinstance(value, str):
            return FORBIDDEN.search(value) is not None
        if isinstance(value, dict):
            return any(check(v, where) for v in value.values())
        if isinstance(value, list):
            return any(check(v, where) for v in value)
        return False

    try:
        tables = [
            r[0].decode()
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'leza%'"
            )
        ]
        for table in tables:
            cur = con.execute(f'SELECT * FROM "{table}"')
            cols = [d[0] for d in cur.description]
            for row in cur:
                for col, value in zip(cols, row, strict=True):
                    if not isinstance(value, bytes):
                        continue
                    seen += 1
                    try:
                        text = value.decode("utf-8")
                        wrong = check(text, col)
                        if not wrong and text[:1] in "{[":
                            with contextlib.suppress(ValueError):
                                wrong = check(json.loads(text), col)
                    except UnicodeDecodeError:
                        wrong = True
                    if wrong:
                        bad += 1
                        if len(examples) < 5:
                            examples.append(f"{table}.{col}: {value[:120]!r}")
    finally:
        con.close()
    return seen, bad, examples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", metavar="DB", help="write to this SQLite file and keep it")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    grammar = Grammar(rng)
    counts = Counts()

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.keep) if args.keep else Path(tmp) / "fuzz.db"
        leza = Leza(
            storage=f"sqlite:///{db}",
            trusted_proxies=TRUSTED,
            performer=performer_hook,
            spill_dir=str(Path(tmp) / "spill"),
            secret_key="fuzz-secret-key-0123456789abcdef",
        )
        loop = asyncio.new_event_loop()
        started = time.perf_counter()
        for i in range(args.requests):
            counts.requests += 1
            if i % 2 == 0:  # one middleware per request: each has its own app
                loop.run_until_complete(asgi_request(leza, grammar.scope(), rng, counts))
            else:
                wsgi_request(leza, grammar.environ(), rng, counts)
            if i % 500 == 499:
                leza.flush(30)  # keep the queue short: drops would not be the inputs' doing
        flushed = leza.flush(60)
        elapsed = time.perf_counter() - started
        loop.close()
        stats = leza.stats()
        leza.shutdown(10)
        seen, bad, examples = scan(db)

    balanced = (
        stats["enqueued"]
        == stats["written"] + stats["dropped"] + stats["pending"] + stats["spilled"]
    )
    print(f"seed {args.seed}")
    print(f"requests               {counts.requests:>8,}  (ASGI and WSGI alternating)")
    print(f"  app failed on purpose {counts.failed_on_purpose:>7,}")
    print(f"exceptions escaped     {counts.escaped:>8,}  (must be 0)")
    print(f"responses altered      {counts.altered:>8,}  (must be 0)")
    print(f"close() not once       {counts.close_not_once:>8,}  (must be 0)")
    print(f"events stored          {stats['written']:>8,}  (must equal requests)")
    print(
        f"  books balanced {balanced}, dropped {stats['dropped']}, spilled {stats['spilled']}, "
        f"request_path_errors {stats['request_path_errors']}, "
        f"performer_hook_errors {stats['performer_hook_errors']}"
    )
    print(f"text values scanned    {seen:>8,}")
    print(f"control chars found    {bad:>8,}  (must be 0; includes invalid UTF-8)")
    per_request = elapsed / counts.requests * 1e6
    print(f"elapsed                {elapsed:>8.1f} s  ({per_request:,.0f} µs/request)")
    for line in counts.examples + examples:
        print("  e.g.", line)
    ok = (
        flushed
        and balanced
        and counts.escaped == 0
        and counts.altered == 0
        and counts.close_not_once == 0
        and stats["written"] == counts.requests
        and bad == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
