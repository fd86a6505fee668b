"""The ASGI middleware on real Starlette and FastAPI apps, through httpx."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from conftest import balanced
from fastapi import FastAPI, HTTPException
from mmdb_factory import FRANKFURT_IP, LONDON_IP
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from leza_middleware import LezaMiddleware, Performer
from leza_middleware.testing import capture_events

CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: Any) -> Any:
        user = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(user)) if user else None


def starlette_app() -> Starlette:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def forbidden(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=403)

    async def boom(request: Request) -> PlainTextResponse:
        raise ValueError("kaput")

    async def stream(request: Request) -> StreamingResponse:
        async def gen() -> Any:
            for i in range(3):
                yield f"chunk{i}\n".encode()

        return StreamingResponse(gen())

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    async def sub(request: Request) -> PlainTextResponse:
        return PlainTextResponse("sub")

    return Starlette(
        routes=[
            Route("/", home),
            Route("/items/{item_id:int}", item),
            Route("/forbidden", forbidden),
            Route("/boom", boom),
            Route("/stream", stream),
            WebSocketRoute("/ws", ws),
            Mount("/api", routes=[Route("/things/{name}", sub)]),
        ],
        middleware=[Middleware(AuthenticationMiddleware, backend=HeaderAuth())],
    )


async def _get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path, **kwargs)


@pytest.mark.anyio
async def test_one_enriched_access_event_per_request(make_leza: Any) -> None:
    leza = make_leza(trusted_proxies=["203.0.113.9"])
    app = LezaMiddleware(starlette_app(), leza=leza)
    r = await _get(
        app,
        "/items/42?color=red&access_token=abc123",
        headers={
            "user-agent": CHROME_WIN,
            "x-forwarded-for": f"1.2.3.4, {FRANKFURT_IP}",
            "x-user": "alice",
        },
    )
    assert r.status_code == 200
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["endpoint"] == "/items/42?color=red&access_token=[Filtered]"
    assert event["endpoint_type"] == "GET"
    assert event["route"] == "/items/{item_id}"
    assert event["status"] == 200
    assert event["action"] == "access"
    assert event["outcome"] == "success"
    assert event["reason"] == "Request completed: 200 OK"
    assert event["request_id"] == r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", event["request_id"])
    # the trusted peer's header is believed; the spoofable left entry is not the client
    assert event["ip"] == FRANKFURT_IP
    assert event["peer_ip"] == "203.0.113.9"
    assert event["ip_valid"] is True
    assert event["browser"] == {
        "type": "browser",
        "name": "Chrome",
        "version": "91.0",
        "engine": "Blink",
        "engineVersion": "",
    }
    assert event["os"]["name"] == "Windows"
    assert event["os"]["platform"] == "x64"
    assert event["device"]["type"] == "desktop"
    assert event["bot"] is None
    geo = event["geoLocationInfoOfIp"]
    assert geo["city"] == "Frankfurt am Main"
    assert geo["country_code"] == "DE"
    assert geo["region_code"] == "HE"
    assert geo["ip"] == FRANKFURT_IP
    assert event["performer"]["id"] == "alice"
    assert event["performer"]["name"] == "alice"
    assert event["app"] == "app"
    assert event["host"] == "testserver"
    assert event["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])
    assert balanced(leza.stats())


@pytest.mark.anyio
async def test_statuses_map_to_action_outcome_and_reason(make_leza: Any) -> None:
    leza = make_leza()
    app = LezaMiddleware(starlette_app(), leza=leza)
    await _get(app, "/forbidden")
    await _get(app, "/nope")
    with pytest.raises(ValueError, match="kaput"):
        await _get(app, "/boom")
    assert leza.flush(5)
    by_path = {e["endpoint"]: e for e in leza.query.access()}
    assert by_path["/forbidden"]["action"] == "denied"
    assert by_path["/forbidden"]["outcome"] == "denied"
    assert by_path["/forbidden"]["reason"] == "Access denied: 403 Forbidden"
    assert by_path["/nope"]["outcome"] == "failure"
    assert by_path["/nope"]["status"] == 404
    assert by_path["/boom"]["status"] == 500
    assert by_path["/boom"]["outcome"] == "error"
    assert "ValueError" in by_path["/boom"]["reason"]


@pytest.mark.anyio
async def test_request_id_reused_from_header_or_traceparent_and_echoed(make_leza: Any) -> None:
    leza = make_leza()
    app = LezaMiddleware(starlette_app(), leza=leza)
    r1 = await _get(app, "/", headers={"x-request-id": "abc-123_XYZ.9"})
    assert r1.headers["x-request-id"] == "abc-123_XYZ.9"
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r2 = await _get(app, "/", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert r2.headers["x-request-id"] == trace
    # invalid values are not trusted: a fresh id instead
    r3 = await _get(app, "/", headers={"x-request-id": "bad id\u00e9<script>".encode("latin-1")})
    assert re.fullmatch(r"[0-9a-f]{32}", r3.headers["x-request-id"])
    r4 = await _get(app, "/")
    assert r4.headers["x-request-id"] != r3.headers["x-request-id"]
    assert leza.flush(5)
    stored = {e["request_id"] for e in leza.query.access()}
    assert stored == {
        "abc-123_XYZ.9",
        trace,
        r3.headers["x-request-id"],
        r4.headers["x-request-id"],
    }


@pytest.mark.anyio
async def test_streaming_response_and_mounted_route_template(make_leza: Any) -> None:
    leza = make_leza()
    app = LezaMiddleware(starlette_app(), leza=leza)
    r = await _get(app, "/stream")
    assert r.text == "chunk0\nchunk1\nchunk2\n"
    await _get(app, "/api/things/pen")
    assert leza.flush(5)
    by_path = {e["endpoint"]: e for e in leza.query.access()}
    assert by_path["/stream"]["status"] == 200
    assert by_path["/api/things/pen"]["route"] == "/api/things/{name}"


def test_websocket_recorded_once_on_connect_and_lifespan_flushes(make_leza: Any) -> None:
    leza = make_leza(flush_interval=60)  # only the lifespan shutdown can flush in time
    app = LezaMiddleware(starlette_app(), leza=leza)
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hello"
        client.get("/", headers={"user-agent": IPHONE})
    # leaving the TestClient ran lifespan shutdown, which flushed the queue
    stats = leza.stats()
    assert stats["written"] == 2, stats
    events = {e["endpoint_type"]: e for e in leza.query.access()}
    assert events["WS"]["endpoint"] == "/ws"
    assert events["WS"]["status"] == 101
    assert events["GET"]["device"]["type"] == "smartphone"
    assert events["GET"]["os"]["name"] == "iOS"


def test_fastapi_add_middleware_one_line_with_custom_performer(make_leza: Any) -> None:
    def who(request: Request) -> Performer | None:
        name = request.headers.get("x-demo-user")
        return Performer(id=f"u-{name}", name=name, email=f"{name}@example.com") if name else None

    leza = make_leza(performer=who)
    app = FastAPI()

    @app.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        if thing_id == 0:
            raise HTTPException(403)
        return {"id": thing_id}

    app.add_middleware(LezaMiddleware, leza=leza)
    with TestClient(app) as client:
        assert (
            client.get(
                "/things/5", headers={"x-demo-user": "zoe", "user-agent": GOOGLEBOT}
            ).status_code
            == 200
        )
        assert client.get("/things/0").status_code == 403
    events = leza.query.access()
    assert [e["status"] for e in events] == [403, 200]
    ok = events[1]
    assert ok["route"] == "/things/{thing_id}"
    assert ok["performer"]["id"] == "u-zoe"
    assert ok["performer"]["email"] == "zoe@example.com"
    assert ok["bot"]["name"] == "Googlebot"
    assert events[0]["performer"] is None
    assert events[0]["action"] == "denied"


@pytest.mark.anyio
async def test_a_raising_performer_hook_is_counted_not_propagated(make_leza: Any) -> None:
    def broken(request: Request) -> None:
        raise RuntimeError("hook bug")

    leza = make_leza(performer=broken)
    app = LezaMiddleware(starlette_app(), leza=leza)
    r = await _get(app, "/")
    assert r.status_code == 200
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["performer"] is None
    assert leza.stats()["performer_hook_errors"] == 1


@pytest.mark.anyio
async def test_configured_from_environment_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, city_db: Any
) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("LEZA_STORAGE", f"sqlite:///{db}")
    monkeypatch.setenv("LEZA_GEOIP_DB", str(city_db))
    monkeypatch.setenv("LEZA_APP_NAME", "from-env")
    monkeypatch.setenv("LEZA_TRUSTED_PROXIES", "203.0.113.9, 10.0.0.0/8")
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("x"))])
    app.add_middleware(LezaMiddleware)  # no arguments at all
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/", headers={"x-forwarded-for": LONDON_IP})
    layer: Any = app.middleware_stack
    while not isinstance(layer, LezaMiddleware):
        layer = layer.app
    leza = layer.leza
    try:
        assert leza.flush(5)
        [event] = leza.query.access()
        assert event["app"] == "from-env"
        assert event["ip"] == LONDON_IP
        assert event["geoLocationInfoOfIp"]["country_code"] == "GB"
        assert db.exists()
    finally:
        leza.shutdown(2)


@pytest.mark.anyio
async def test_capture_events_helper(make_leza: Any) -> None:
    leza = make_leza()
    app = LezaMiddleware(starlette_app(), leza=leza)
    with capture_events() as events:
        await _get(app, "/items/1")
        await _get(app, "/forbidden")
    assert events.actions() == ["access", "denied"]
    assert events[0]["route"] == "/items/{item_id}"
    assert len(events.of_kind("access")) == 2


@pytest.mark.anyio
async def test_secret_headers_never_stored(make_leza: Any) -> None:
    leza = make_leza()
    app = LezaMiddleware(starlette_app(), leza=leza)
    await _get(
        app,
        "/?password=hunter2&x-api-key=k&page=2",
        headers={"authorization": "Bearer SECRET-TOKEN", "cookie": "sessionid=RAWSESSION"},
    )
    assert leza.flush(5)
    [event] = leza.query.access()
    text = repr(event)
    for secret in ("SECRET-TOKEN", "RAWSESSION", "hunter2"):
        assert secret not in text
    assert event["endpoint"] == "/?password=[Filtered]&x-api-key=[Filtered]&page=2"


@pytest.mark.anyio
async def test_control_characters_stripped_and_sizes_capped(make_leza: Any) -> None:
    leza = make_leza()
    app = LezaMiddleware(starlette_app(), leza=leza)
    await _get(
        app,
        "/%0d%0aFAKE%20LOG%1b[31m" + "a" * 5000,
        headers={"user-agent": "evil\r\nX: y" + "u" * 1000},
    )
    assert leza.flush(5)
    [event] = leza.query.access()
    for field in ("endpoint", "user_agent"):
        assert not re.search(r"[\x00-\x1f\x7f]", event[field])
    assert len(event["endpoint"]) <= 2048
    assert len(event["user_agent"]) <= 512


@pytest.mark.anyio
async def test_repeated_forwarding_header_lines_are_walked_as_one_chain(make_leza: Any) -> None:
    leza = make_leza(trusted_proxies=["203.0.113.9", "10.0.0.0/8"])
    app = LezaMiddleware(starlette_app(), leza=leza)
    # Two X-Forwarded-For lines mean the same as one comma-joined line (RFC 9110):
    # the client is the rightmost untrusted hop across both.
    headers = [
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"x-forwarded-for", f"{LONDON_IP}, 10.1.2.3".encode()),
        (b"user-agent", IPHONE.encode()),
    ]
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/", headers=headers)
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["ip"] == LONDON_IP
    assert event["proxy_chain"] == ["10.1.2.3"]
    assert event["device"]["type"] == "smartphone"


@pytest.mark.anyio
async def test_user_class_with_unimplemented_properties_still_records(make_leza: Any) -> None:
    from starlette.authentication import BaseUser

    class HalfUser(BaseUser):  # identity and display_name left unimplemented
        @property
        def is_authenticated(self) -> bool:
            return True

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def with_user(scope: Any, receive: Any, send: Any) -> None:
        scope["user"] = HalfUser()
        await Starlette(routes=[Route("/", endpoint)])(scope, receive, send)

    leza = make_leza()
    await _get(LezaMiddleware(with_user, leza=leza), "/")
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["status"] == 200
    assert event["performer"] is None
    assert leza.stats()["request_path_errors"] == 0


@pytest.mark.anyio
async def test_request_id_set_by_the_app_is_the_one_stored(make_leza: Any) -> None:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"X-Request-ID": "app-chose-this"})

    leza = make_leza()
    app = LezaMiddleware(Starlette(routes=[Route("/", endpoint)]), leza=leza)
    r = await _get(app, "/")
    assert r.headers.get_list("x-request-id") == ["app-chose-this"]
    assert leza.flush(5)
    assert leza.query.access()[0]["request_id"] == "app-chose-this"


@pytest.mark.anyio
async def test_performer_text_is_cleaned_before_storage(make_leza: Any) -> None:
    def who(request: Any) -> Performer:
        return Performer(id="u1\r\nforged", name="Eve\x1b[31m", email="eve@example.com")

    leza = make_leza(performer=who)
    await _get(LezaMiddleware(starlette_app(), leza=leza), "/")
    assert leza.flush(5)
    performer = leza.query.access()[0]["performer"]
    # an id's control characters are replaced, not dropped: it cannot pass for "u1forged"
    assert performer["id"] == "u1\ufffd\ufffdforged"
    assert performer["name"] == "Eve[31m"
    assert leza.query.access(performer_id="u1\ufffd\ufffdforged")


@pytest.mark.parametrize(
    ("template", "stored"),
    [
        ("/items/{item_id:int}", "/items/{item_id}"),  # Starlette / FastAPI
        ("/items/<int:item_id>", "/items/{item_id}"),  # Flask
        ("items/<int:item_id>", "/items/{item_id}"),  # Django path()
        ("/files/{rest:path}", "/files/{rest}"),
        ("/plain", "/plain"),
        ("^articles/(?P<year>[0-9]{4})/$", "^articles/(?P<year>[0-9]{4})/$"),  # re_path
    ],
)
def test_route_templates_read_the_same_in_every_framework(template: str, stored: str) -> None:
    from leza_middleware.request_path import normalise_route

    assert normalise_route(template) == stored


@pytest.mark.anyio
async def test_failure_after_the_response_started_keeps_the_sent_status(make_leza: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("broke mid-stream")

    leza = make_leza()
    with pytest.raises(ValueError, match="mid-stream"):
        await _get(LezaMiddleware(app, leza=leza), "/stream")
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["status"] == 200  # what the client got
    assert event["outcome"] == "error"
    assert event["reason"] == "Response interrupted after 200 OK (ValueError)"


@pytest.mark.anyio
async def test_malformed_request_id_from_the_app_is_not_stored(make_leza: Any) -> None:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"X-Request-ID": "bad id with spaces"})

    leza = make_leza()
    r = await _get(LezaMiddleware(Starlette(routes=[Route("/", endpoint)]), leza=leza), "/")
    assert r.headers["x-request-id"] == "bad id with spaces"  # the app's choice reaches the client
    assert leza.flush(5)
    assert re.fullmatch(r"[0-9a-f]{32}", leza.query.access()[0]["request_id"])
