"""The WSGI middleware around plain WSGI apps (no framework).

Most tests drive the middleware as a PEP 3333 server would (``serve`` below),
which lets them stop reading early, close twice or hand over odd environs;
one test runs a real ``wsgiref`` server in a thread.
"""

from __future__ import annotations

import http.client
import io
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
from conftest import balanced
from mmdb_factory import LONDON_IP

from leza_middleware import LezaConfigError, LezaWSGIMiddleware, Performer, current_request_id
from leza_middleware.integrations.wsgi import PERFORMER_KEY, ROUTE_KEY

CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)

StartResponse = Callable[..., Any]


class Served:
    """What a client got from one request: status, headers, body chunks."""

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.exc_info: Any = None

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def environ_for(path: str = "/", **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REMOTE_ADDR": "203.0.113.9"}
    environ.update(extra)
    setup_testing_defaults(environ)
    return environ


def serve(
    app: Any, path: str = "/", *, read: int | None = None, close_times: int = 1, **extra: Any
) -> Served:
    """Run one request like a WSGI server: call, iterate (``read`` chunks at most), close."""
    served = Served()

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        served.status, served.headers, served.exc_info = status, headers, exc_info
        return served.chunks.append

    result = app(environ_for(path, **extra), start_response)
    try:
        for i, chunk in enumerate(result):
            served.chunks.append(chunk)
            if read is not None and i + 1 >= read:
                break  # the client went away
    finally:
        for _ in range(close_times):
            getattr(result, "close", lambda: None)()
    return served


def hello(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class Body:
    """An app iterable that counts close() calls and can fail mid-way."""

    def __init__(self, chunks: Iterable[bytes], fail_at: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_at = fail_at
        self.closed = 0
        self.error = ValueError("broken stream")

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise self.error
            yield chunk

    def close(self) -> None:
        self.closed += 1


def body_app(body: Body, status: str = "200 OK") -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Body:
        start_response(status, [("Content-Type", "text/plain")])
        return body

    return app


def access(leza: Any) -> list[dict[str, Any]]:
    assert leza.flush(5)
    events: list[dict[str, Any]] = leza.query.access()
    return events


def test_one_enriched_access_event_per_request(make_leza: Any) -> None:
    leza = make_leza(trusted_proxies=["203.0.113.9"])
    served = serve(
        LezaWSGIMiddleware(hello, leza=leza),
        "/items/42",
        QUERY_STRING="color=red&access_token=abc123",
        REQUEST_METHOD="POST",
        HTTP_USER_AGENT=CHROME_WIN,
        HTTP_X_FORWARDED_FOR=f"1.2.3.4, {LONDON_IP}",
        HTTP_HOST="shop.example",
        **{"wsgi.url_scheme": "https"},
    )
    assert served.status == "200 OK"
    assert b"".join(served.chunks) == b"hello"
    [rid] = served.header("X-Request-ID")
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    [event] = access(leza)
    assert event["endpoint"] == "/items/42?color=red&access_token=[Filtered]"
    assert event["endpoint_type"] == "POST"
    assert event["route"] is None  # a plain WSGI app has no route templates
    assert event["status"] == 200
    assert event["outcome"] == "success"
    assert event["request_id"] == rid
    assert event["ip"] == LONDON_IP
    assert event["peer_ip"] == "203.0.113.9"
    assert event["scheme"] == "https"
    assert event["host"] == "shop.example"
    assert event["browser"]["name"] == "Chrome"
    assert event["geoLocationInfoOfIp"]["country_code"] == "GB"
    assert event["performer"] is None
    assert balanced(leza.stats())
    assert leza.stats()["request_path_errors"] == 0


def test_streamed_body_recorded_after_the_last_chunk_with_request_current(
    make_leza: Any,
) -> None:
    leza = make_leza()
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        seen.append(current_request_id())
        start_response("200 OK", [])

        def chunks() -> Iterator[bytes]:
            for i in range(3):
                seen.append(current_request_id())  # still the request's id while streaming
                time.sleep(0.02)
                yield b"chunk%d" % i

        return chunks()

    served = Served()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        served.headers = headers
        return served.chunks.append

    result: Any = LezaWSGIMiddleware(app, leza=leza)(environ_for("/stream"), start_response)
    assert current_request_id() is None  # not leaked between chunks
    iterator = iter(result)
    assert next(iterator) == b"chunk0"
    assert current_request_id() is None
    assert leza.flush(5)
    assert leza.stats()["enqueued"] == 0  # not yet: the body is still being produced
    assert list(iterator) == [b"chunk1", b"chunk2"]
    result.close()
    [event] = access(leza)
    [rid] = [v for k, v in served.headers if k == "X-Request-ID"]
    assert seen == [rid] * 4
    assert event["request_id"] == rid
    assert event["duration_ms"] >= 60  # until the last chunk, not until the app returned


def test_a_body_built_in_memory_is_recorded_when_the_app_returns(make_leza: Any) -> None:
    leza = make_leza()
    result: Any = LezaWSGIMiddleware(hello, leza=leza)(environ_for(), lambda *a: None)
    # its last chunk exists already: recorded without waiting for a reader
    [event] = access(leza)
    assert event["status"] == 200
    assert list(result) == [b"hello"]
    result.close()
    assert leza.flush(5)
    assert leza.stats()["enqueued"] == 1


def test_close_called_once_when_the_client_stops_early(make_leza: Any) -> None:
    leza = make_leza()
    body = Body([b"a", b"b", b"c"])
    served = serve(LezaWSGIMiddleware(body_app(body), leza=leza), read=1, close_times=2)
    assert served.chunks == [b"a"]
    assert body.closed == 1  # the server's close reaches the app once, however often it calls
    [event] = access(leza)
    assert event["status"] == 200
    assert event["outcome"] == "success"


def test_app_raising_mid_stream_is_recorded_and_reraised_unchanged(make_leza: Any) -> None:
    leza = make_leza()
    body = Body([b"a", b"b", b"c"], fail_at=1)
    with pytest.raises(ValueError, match="broken stream") as info:
        serve(LezaWSGIMiddleware(body_app(body), leza=leza), "/late")
    assert info.value is body.error
    assert body.closed == 1
    # Before any byte went out the server still answers 500 itself.
    early = Body([b"a"], fail_at=0)
    with pytest.raises(ValueError, match="broken stream"):
        serve(LezaWSGIMiddleware(body_app(early), leza=leza), "/early")
    assert early.closed == 1
    by_path = {e["endpoint"]: e for e in access(leza)}
    # the status line already went out with the first chunk: that is what the client got
    assert by_path["/late"]["status"] == 200
    assert by_path["/late"]["outcome"] == "error"
    assert "ValueError" in by_path["/late"]["reason"]
    assert by_path["/early"]["status"] == 500
    assert "ValueError" in by_path["/early"]["reason"]
    assert len(by_path) == 2


def test_app_raising_in_the_call_is_a_500_and_reraised_unchanged(make_leza: Any) -> None:
    leza = make_leza()
    error = KeyError("missing")

    def before_start(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        raise error

    def after_start(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        raise error

    for path, app in (("/before", before_start), ("/after", after_start)):
        with pytest.raises(KeyError) as info:
            serve(LezaWSGIMiddleware(app, leza=leza), path)
        assert info.value is error
    assert current_request_id() is None
    events = access(leza)
    assert [(e["endpoint"], e["status"], e["outcome"]) for e in events] == [
        ("/after", 500, "error"),
        ("/before", 500, "error"),
    ]
    assert all("KeyError" in e["reason"] for e in events)


def test_status_set_lazily_by_a_generator_app_and_exc_info_passed_through(
    make_leza: Any,
) -> None:
    leza = make_leza()

    def lazy(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        # PEP 3333 allows start_response from inside the body generator.
        try:
            raise RuntimeError("handled")
        except RuntimeError:
            import sys

            start_response("503 Service Unavailable", [], sys.exc_info())
        yield b"later"

    served = serve(LezaWSGIMiddleware(lazy, leza=leza))
    assert served.status == "503 Service Unavailable"
    assert served.exc_info[0] is RuntimeError
    [event] = access(leza)
    assert event["status"] == 503


@pytest.mark.parametrize(
    ("method", "status"),
    [("HEAD", "200 OK"), ("GET", "204 No Content"), ("GET", "304 Not Modified")],
)
def test_empty_bodies_are_recorded_with_their_status(
    make_leza: Any, method: str, status: str
) -> None:
    leza = make_leza()
    body = Body([])
    served = serve(LezaWSGIMiddleware(body_app(body, status), leza=leza), REQUEST_METHOD=method)
    assert served.chunks == []
    assert body.closed == 1
    [event] = access(leza)
    assert event["endpoint_type"] == method
    assert event["status"] == int(status[:3])


def test_request_id_reused_echoed_or_taken_from_the_app(make_leza: Any) -> None:
    leza = make_leza()
    app = LezaWSGIMiddleware(hello, leza=leza)
    r1 = serve(app, "/1", HTTP_X_REQUEST_ID="abc-123_XYZ.9")
    assert r1.header("x-request-id") == ["abc-123_XYZ.9"]
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r2 = serve(app, "/2", HTTP_TRACEPARENT=f"00-{trace}-00f067aa0ba902b7-01")
    assert r2.header("x-request-id") == [trace]
    # invalid (or non-latin-1, from a non-conforming server) values are not trusted
    r3 = serve(app, "/3", HTTP_X_REQUEST_ID="bad id\u00e9<script>")
    r4 = serve(app, "/4", HTTP_X_REQUEST_ID="\u65e5\u672c")
    for r in (r3, r4):
        assert re.fullmatch(r"[0-9a-f]{32}", r.header("x-request-id")[0])

    def own_id(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("x-request-id", "app-chose-this")])
        return [b"ok"]

    r5 = serve(LezaWSGIMiddleware(own_id, leza=leza), "/5", HTTP_X_REQUEST_ID="from-client")
    assert r5.header("X-Request-ID") == ["app-chose-this"]  # no duplicate
    stored = {e["endpoint"]: e["request_id"] for e in access(leza)}
    assert stored == {
        "/1": "abc-123_XYZ.9",
        "/2": trace,
        "/3": r3.header("x-request-id")[0],
        "/4": r4.header("x-request-id")[0],
        "/5": "app-chose-this",
    }


def test_configured_request_id_header_and_app_headers_not_mutated(make_leza: Any) -> None:
    leza = make_leza(request_id_header="X-Correlation-ID")
    shared_headers = [("Content-Type", "text/plain")]

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", shared_headers)  # e.g. a module-level constant
        return [b"ok"]

    mw = LezaWSGIMiddleware(app, leza=leza)
    r1 = serve(mw, HTTP_X_CORRELATION_ID="corr-1")
    r2 = serve(mw)
    assert r1.header("X-Correlation-ID") == ["corr-1"]
    assert ("X-Correlation-ID", "corr-1") in r1.headers
    assert len(r2.header("X-Correlation-ID")) == 1
    assert shared_headers == [("Content-Type", "text/plain")]


def test_performer_hook_gets_a_werkzeug_request(make_leza: Any) -> None:
    from werkzeug.wrappers import Request

    received: list[Any] = []

    def who(request: Any) -> Performer | None:
        received.append(request)
        name = request.headers.get("X-User")
        return Performer(id=f"u-{name}", name=name) if name else None

    leza = make_leza(performer=who)
    app = LezaWSGIMiddleware(hello, leza=leza)
    serve(app, "/a", HTTP_X_USER="zoe")
    serve(app, "/b")
    assert all(isinstance(r, Request) for r in received)
    by_path = {e["endpoint"]: e for e in access(leza)}
    assert by_path["/a"]["performer"]["id"] == "u-zoe"
    assert by_path["/b"]["performer"] is None


def test_a_raising_performer_hook_is_counted_not_propagated(make_leza: Any) -> None:
    def broken(request: Any) -> None:
        raise RuntimeError("hook bug")

    leza = make_leza(performer=broken)
    served = serve(LezaWSGIMiddleware(hello, leza=leza))
    assert served.status == "200 OK"
    [event] = access(leza)
    assert event["performer"] is None
    assert leza.stats()["performer_hook_errors"] == 1


def test_integration_environ_keys_route_and_performer(make_leza: Any) -> None:
    leza = make_leza(performer=lambda request: {"id": "from-hook"})

    def framework(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        # what a framework integration leaves behind (see integrations/flask.py)
        environ[ROUTE_KEY] = "/users/<int:user_id>"
        environ[PERFORMER_KEY] = Performer(id="from-framework")
        return hello(environ, start_response)

    serve(LezaWSGIMiddleware(framework, leza=leza), "/users/7")
    [event] = access(leza)
    assert event["route"] == "/users/{user_id}"
    assert event["performer"]["id"] == "from-framework"  # the hook was not called again


@pytest.mark.parametrize(
    ("script_name", "path_info", "endpoint"),
    [
        ("", "/caf\u00c3\u00a9", "/caf\u00e9"),  # UTF-8 bytes as PEP 3333 hands them over
        ("", "/bad\u00ff", "/bad\ufffd"),  # not UTF-8: replaced, never a crash
        ("/app", "/caf\u00c3\u00a9", "/app/caf\u00e9"),  # the mount prefix is kept
        ("/app", "", "/app"),
        ("", "", "/"),
        ("", "/\u65e5\u672c", "/\u65e5\u672c"),  # a server that already decoded it
        ("", "/a\r\nFAKE\x1b[31m", "/aFAKE[31m"),  # control characters stripped
    ],
)
def test_paths_as_the_client_sent_them(
    make_leza: Any, script_name: str, path_info: str, endpoint: str
) -> None:
    leza = make_leza()
    serve(LezaWSGIMiddleware(hello, leza=leza), path_info, SCRIPT_NAME=script_name)
    [event] = access(leza)
    assert event["endpoint"] == endpoint


def test_recording_failures_never_reach_the_app(
    make_leza: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    leza = make_leza()

    def broken_offer(item: Any) -> None:
        raise RuntimeError("queue bug")

    monkeypatch.setattr(leza.recorder, "offer", broken_offer)
    served = serve(LezaWSGIMiddleware(hello, leza=leza))
    assert served.status == "200 OK"
    assert b"".join(served.chunks) == b"hello"
    assert leza.stats()["request_path_errors"] == 1


def test_file_wrapper_passed_through_for_sendfile(make_leza: Any, tmp_path: Path) -> None:
    leza = make_leza()
    data = b"0123456789" * 1000
    (tmp_path / "f.bin").write_bytes(data)
    opened: list[Any] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        f = (tmp_path / "f.bin").open("rb")
        opened.append(environ["wsgi.file_wrapper"](f, 4096))
        return opened[-1]

    environ = environ_for("/file", **{"wsgi.file_wrapper": FileWrapper})
    result: Any = LezaWSGIMiddleware(app, leza=leza)(environ, lambda s, h, e=None: None)
    assert result is opened[0]  # the server's own type: it may use sendfile()
    assert b"".join(result) == data
    assert leza.flush(5)
    assert leza.stats()["enqueued"] == 0  # recorded when the server closes it
    result.close()
    result.close()
    assert result.filelike.closed
    [event] = access(leza)
    assert event["status"] == 200
    assert event["endpoint"] == "/file"


def test_request_current_only_inside_the_request(make_leza: Any) -> None:
    leza = make_leza()
    inside: list[str | None] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        inside.append(current_request_id())
        return hello(environ, start_response)

    served = serve(LezaWSGIMiddleware(app, leza=leza))
    assert inside == served.header("X-Request-ID")
    assert current_request_id() is None


def test_configured_from_environment_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, city_db: Path
) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("LEZA_STORAGE", f"sqlite:///{db}")
    monkeypatch.setenv("LEZA_GEOIP_DB", str(city_db))
    monkeypatch.setenv("LEZA_APP_NAME", "wsgi-from-env")
    app = LezaWSGIMiddleware(hello)  # no arguments at all
    try:
        serve(app)
        [event] = access(app.leza)
        assert event["app"] == "wsgi-from-env"
        assert db.exists()
    finally:
        app.leza.shutdown(2)


def test_a_leza_in_use_is_not_reconfigured_by_a_flask_config(make_leza: Any) -> None:
    """The middleware's core is built once, from the Leza's final settings: a
    Flask app's config may configure a Leza only before its parts are built
    (``init_app`` before use), never rebuild a live one under a middleware."""
    from flask import Flask

    leza = make_leza()  # app_name from the environment or the default: "app"
    flask_app = Flask("wrapped_by_hand")
    flask_app.config["LEZA_APP_NAME"] = "after"
    wrapped = LezaWSGIMiddleware(flask_app.wsgi_app, leza=leza)  # builds the Leza's parts
    flask_app.wsgi_app = wrapped  # type: ignore[method-assign]
    with pytest.raises(LezaConfigError, match="already in use"):
        leza.init_app(flask_app)
    assert leza.settings.app_name == "app"
    serve(LezaWSGIMiddleware(hello, leza=leza))
    [event] = access(leza)
    assert event["app"] == "app"

    # Before its first use, the app's config is what the parts are built from.
    fresh = make_leza()
    other = Flask("configured_first")
    other.config["LEZA_APP_NAME"] = "after"
    fresh.init_app(other)
    other.add_url_rule("/", "home", lambda: "hi")
    other.test_client().get("/")
    # (one storage for the test: the first Leza's event is there too, older)
    assert [e["app"] for e in access(fresh)] == ["after", "app"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_real_server_records_exactly_one_event_per_request(make_leza: Any) -> None:
    leza = make_leza()
    n = 25

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"n="
        yield environ["PATH_INFO"][1:].encode()

    server: WSGIServer = make_server(
        "127.0.0.1", 0, LezaWSGIMiddleware(app, leza=leza), handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        ids = set()
        for i in range(n):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
            try:
                conn.request("GET", f"/{i}", headers={"User-Agent": CHROME_WIN})
                response = conn.getresponse()
                assert response.read() == b"n=%d" % i
                ids.add(response.getheader("X-Request-ID"))
            finally:
                conn.close()
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
    events = access(leza)
    assert len(events) == n
    assert {e["request_id"] for e in events} == ids
    assert sorted(int(e["endpoint"][1:]) for e in events) == list(range(n))
    assert all(e["peer_ip"] == "127.0.0.1" for e in events)
    assert balanced(leza.stats())


def test_wsgi_input_untouched(make_leza: Any) -> None:
    leza = make_leza()

    def echo(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [environ["wsgi.input"].read()]

    served = serve(
        LezaWSGIMiddleware(echo, leza=leza),
        REQUEST_METHOD="POST",
        CONTENT_LENGTH="5",
        **{"wsgi.input": io.BytesIO(b"hello")},
    )
    assert served.chunks == [b"hello"]


# --------------------------------------------------------------------------- sessions


class Browser:
    """A cookie jar over ``serve``: sends what the middleware set, forgets what it cleared."""

    def __init__(self, app: Any, **extra: Any) -> None:
        self.app = app
        # a browser opening pages: it gets a machine id (API clients don't)
        self.extra = {
            "HTTP_ACCEPT": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            **extra,
        }
        self.cookies: dict[str, str] = {}

    def get(self, path: str = "/", **extra: Any) -> Served:
        if self.cookies:
            extra.setdefault("HTTP_COOKIE", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        served = serve(self.app, path, **{**self.extra, **extra})
        for header in served.header("Set-Cookie"):
            assert isinstance(header, str)  # PEP 3333: native strings
            pair, _, attributes = header.partition(";")
            name, _, value = pair.partition("=")
            if "Max-Age=0" in attributes:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return served


def set_cookie_names(served: Served) -> list[str]:
    return [h.partition("=")[0] for h in served.header("Set-Cookie")]


def signed_in_app(leza: Any) -> Callable[..., list[bytes]]:
    """A plain WSGI app: ``/login`` signs in through the session API, ``/logout`` is a route."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if environ["PATH_INFO"] == "/login":
            leza.sessions.login(Performer(id="u-1", name="Una"))
        elif environ["PATH_INFO"] == "/bad-login":
            leza.sessions.login_failed(username="eve")
            start_response("401 Unauthorized", [])
            return [b"no"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def header_user(request: Any) -> Performer | None:
    name = request.headers.get("X-User")
    return Performer(id=name) if name else None


def test_machine_cookie_issued_once_secure_on_https_and_forgeries_replaced(
    make_leza: Any,
) -> None:
    leza = make_leza()
    browser = Browser(LezaWSGIMiddleware(hello, leza=leza))
    first = browser.get("/1")
    [issued] = first.header("Set-Cookie")
    assert issued.startswith("leza_mid=")
    assert "; HttpOnly" in issued
    assert "; SameSite=Lax" in issued
    assert "Secure" not in issued
    assert browser.get("/2").header("Set-Cookie") == []
    secure = serve(
        LezaWSGIMiddleware(hello, leza=leza), "/3", HTTP_ACCEPT="text/html",
        **{"wsgi.url_scheme": "https"},
    )  # fmt: skip
    assert "; Secure" in secure.header("Set-Cookie")[0]
    ident, _, sig = browser.cookies["leza_mid"].partition(".")
    browser.cookies["leza_mid"] = f"{ident}x.{sig}"
    assert set_cookie_names(browser.get("/4")) == ["leza_mid"]
    assert leza.cookies.rejected == 1
    by_path = {e["endpoint"]: e["machine_identifier"] for e in access(leza)}
    assert by_path["/1"] == by_path["/2"] == ident
    assert by_path["/4"] not in (None, ident, f"{ident}x")
    assert by_path["/3"] not in (None, ident)


def test_session_cookie_for_a_signed_in_user_and_logout_route(make_leza: Any) -> None:
    leza = make_leza(performer=header_user, logout_routes=["GET /logout"])
    browser = Browser(LezaWSGIMiddleware(hello, leza=leza), HTTP_USER_AGENT=CHROME_WIN)
    browser.get("/anonymous")
    assert "leza_sid" not in browser.cookies
    signed_in = browser.get("/a", HTTP_X_USER="ann")
    [sid_cookie] = [h for h in signed_in.header("Set-Cookie") if h.startswith("leza_sid=")]
    assert "; HttpOnly" in sid_cookie
    assert "; SameSite=Lax" in sid_cookie
    browser.get("/b", HTTP_X_USER="ann")
    logout = browser.get("/logout", HTTP_X_USER="ann")
    assert any(h.startswith("leza_sid=; Max-Age=0") for h in logout.header("Set-Cookie"))
    assert "leza_sid" not in browser.cookies
    events = list(reversed(access(leza)))
    assert [e["action"] for e in events] == ["access", "access", "access", "logout"]
    assert events[3]["reason"] == "User has the permission to logout"
    assert events[0]["session_id_hash"] is None
    sid = events[1]["session_id_hash"]
    assert sid is not None
    assert events[2]["session_id_hash"] == events[3]["session_id_hash"] == sid
    [record] = leza.sessions.find(performer_id="ann")
    assert (record["_id"], record["end_reason"]) == (sid, "logout")
    assert record["browser"]["name"] == "Chrome"
    assert record["machine_identifier"] == events[1]["machine_identifier"] is not None


def test_logout_route_matched_with_or_without_the_mount_prefix(make_leza: Any) -> None:
    leza = make_leza(logout_routes=["POST /signout", "/bye"])
    app = LezaWSGIMiddleware(hello, leza=leza)
    serve(app, "/signout", REQUEST_METHOD="POST", SCRIPT_NAME="/app")
    serve(app, "/signout", REQUEST_METHOD="GET")
    serve(app, "/bye", SCRIPT_NAME="/app")
    actions = {(e["endpoint_type"], e["endpoint"]): e["action"] for e in access(leza)}
    assert actions == {
        ("POST", "/app/signout"): "logout",
        ("GET", "/signout"): "access",
        ("GET", "/app/bye"): "logout",
    }


def test_session_api_login_and_failed_login_in_a_plain_wsgi_app(make_leza: Any) -> None:
    leza = make_leza()
    browser = Browser(LezaWSGIMiddleware(signed_in_app(leza), leza=leza))
    assert "leza_sid" in set_cookie_names(browser.get("/login"))
    first = browser.cookies["leza_sid"]
    browser.get("/page")
    browser.get("/login")  # signing in again rotates the session cookie
    assert browser.cookies["leza_sid"] != first
    browser.get("/bad-login")
    events = list(reversed(access(leza)))
    assert [e["action"] for e in events] == ["login", "access", "login", "login_failed"]
    assert events[0]["performer"]["name"] == "Una"
    assert events[0]["session_id_hash"] == events[1]["session_id_hash"]
    assert events[2]["session_id_hash"] not in (None, events[0]["session_id_hash"])
    assert events[3]["reason"] == "Login failed for 'eve'"
    assert len(leza.sessions.active(performer_id="u-1")) == 2


def test_revoked_session_refused_without_the_app(make_leza: Any) -> None:
    leza = make_leza(performer=header_user)
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    browser = Browser(LezaWSGIMiddleware(app, leza=leza))
    browser.get("/in", HTTP_X_USER="ann")
    assert leza.flush(5)
    [record] = leza.sessions.active()
    assert leza.sessions.revoke(record["_id"])
    refused = browser.get("/after", HTTP_X_USER="ann", HTTP_X_REQUEST_ID="refused-1")
    assert calls == ["/in"]  # the app never saw it
    assert refused.status == "401 Unauthorized"
    assert b"".join(refused.chunks) == b'{"detail":"Session revoked: sign in again"}'
    assert refused.header("Content-Type") == ["application/json"]
    assert refused.header("Content-Length") == [str(len(b"".join(refused.chunks)))]
    assert refused.header("X-Request-ID") == ["refused-1"]
    assert "leza_sid" not in browser.cookies  # cleared: the browser can sign in again
    denied = access(leza)[0]
    assert (denied["action"], denied["reason"], denied["status"]) == (
        "denied",
        "session revoked",
        401,
    )
    assert denied["session_id_hash"] == record["_id"]
    assert denied["request_id"] == "refused-1"
    assert denied["endpoint"] == "/after"
    browser.get("/again", HTTP_X_USER="ann")  # a new session
    assert calls == ["/in", "/again"]


def test_custom_revoked_response_gets_a_werkzeug_request(make_leza: Any) -> None:
    from werkzeug.wrappers import Request

    seen: list[Any] = []

    def teapot(request: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        seen.append(request)
        return 418, [("Content-Type", "text/plain"), ("Content-Length", "999")], b"no tea"

    leza = make_leza(performer=header_user, revoked_response=teapot)
    browser = Browser(LezaWSGIMiddleware(hello, leza=leza))
    browser.get("/in", HTTP_X_USER="ann")
    assert leza.flush(5)
    leza.sessions.revoke(leza.sessions.active()[0]["_id"])
    refused = browser.get("/x")
    assert refused.status == "418 I'm a Teapot"
    assert refused.header("Content-Length") == ["6"]  # the handler's wrong one dropped
    assert refused.chunks == [b"no tea"]
    [request] = seen
    assert isinstance(request, Request)
    assert request.path == "/x"


def test_cookies_survive_an_error_response_replacing_the_first(make_leza: Any) -> None:
    leza = make_leza(performer=header_user)

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise RuntimeError("late failure")
        except RuntimeError:
            import sys

            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"sorry"]

    served = serve(LezaWSGIMiddleware(app, leza=leza), HTTP_X_USER="ann", HTTP_ACCEPT="text/html")
    assert served.status.startswith("500")
    assert sorted(set_cookie_names(served)) == ["leza_mid", "leza_sid"]
    [event] = access(leza)
    assert event["machine_identifier"] is not None
    assert event["session_id_hash"] is not None


def test_sessions_and_machine_cookie_off(make_leza: Any) -> None:
    leza = make_leza(performer=header_user, sessions=False, machine_cookie=False)
    served = serve(LezaWSGIMiddleware(hello, leza=leza), HTTP_X_USER="ann")
    assert served.header("Set-Cookie") == []
    [event] = access(leza)
    assert event["performer"]["id"] == "ann"
    assert (event["machine_identifier"], event["session_id_hash"]) == (None, None)
