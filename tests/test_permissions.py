"""Endpoint permissions: decided before the app runs, with the product's reasons."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from leza_middleware import LezaConfigError, LezaMiddleware, Performer
from leza_middleware.permissions import parse_rules

USERS = {
    "ops": Performer(
        id="u-ops", name="Ops", permissions=frozenset({"Live Tracking Page Permission"})
    ),
    "guest": Performer(id="u-guest", name="Guest"),
}
RULES = {
    "Live Tracking Page Permission": ["GET /tracking", "GET /tracking/*"],
    "Admin Permission": ["/admin/*"],
}


def who(request: Any) -> Performer | None:
    return USERS.get(request.headers.get("x-user", ""))


def app_with(leza: Any) -> tuple[Starlette, list[str]]:
    ran: list[str] = []

    async def page(request: Request) -> PlainTextResponse:
        ran.append(request.url.path)
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/tracking", page), Route("/tracking/{vehicle}", page),
                Route("/admin/{page}", page, methods=["GET", "POST"]), Route("/public", page)]
    )  # fmt: skip
    return LezaMiddleware(app, leza=leza), ran  # type: ignore[return-value]


def events(leza: Any) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return list(reversed(leza.query.access()))


def test_allowed_denied_and_unauthenticated(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES, performer=who, app_name="Insight App")
    app, ran = app_with(leza)
    with TestClient(app) as client:
        assert client.get("/tracking/42", headers={"x-user": "ops"}).status_code == 200
        denied = client.get("/tracking", headers={"x-user": "guest"})
        anonymous = client.post("/admin/users")
        assert client.get("/public").status_code == 200
    assert denied.status_code == 403
    assert anonymous.status_code == 401
    assert ran == ["/tracking/42", "/public"]  # refused requests never reached the app
    ok, lacks, unauth, public = events(leza)
    assert ok["action"] == "access"
    assert ok["reason"] == (
        "User has the permission Live Tracking Page Permission to access this resource "
        "of this application Insight App"
    )
    assert lacks["action"] == "denied"
    assert lacks["status"] == 403
    assert lacks["reason"] == (
        "User lacks the permission Live Tracking Page Permission to access this resource "
        "of this application Insight App"
    )
    assert lacks["performer"]["id"] == "u-guest"
    assert denied.json() == {"detail": lacks["reason"]}
    assert unauth["status"] == 401
    assert unauth["reason"].startswith(
        "Authentication required for the permission Admin Permission"
    )
    assert public["reason"] == "Request completed: 200 OK"  # unprotected: derived from status


def test_has_permission_hook_decides(make_leza: Any) -> None:
    asked: list[tuple[str, str]] = []

    def has_permission(performer: Performer, request: Any, permission: str) -> bool:
        asked.append((performer.id, permission))
        return performer.id == "u-guest"

    leza = make_leza(permissions=RULES, performer=who, has_permission=has_permission)
    app, _ = app_with(leza)
    with TestClient(app) as client:
        assert client.get("/tracking", headers={"x-user": "guest"}).status_code == 200
        assert client.get("/tracking", headers={"x-user": "ops"}).status_code == 403
    assert asked == [
        ("u-guest", "Live Tracking Page Permission"),
        ("u-ops", "Live Tracking Page Permission"),
    ]


def test_permissions_are_not_stored_with_the_performer(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES, performer=who)
    app, _ = app_with(leza)
    with TestClient(app) as client:
        client.get("/tracking", headers={"x-user": "ops"})
    assert "permissions" not in events(leza)[0]["performer"]


@pytest.mark.parametrize(
    ("rules", "fragment"),
    [
        ({"P": ["tracking"]}, "must look like"),
        ({"P": ["G3T /x"]}, "must look like"),
        ({"": ["/x"]}, "non-empty strings"),
        ({"P": [42]}, "is not a string"),
        (["/x"], "must map a permission name"),
    ],
)
def test_bad_rules_are_configuration_errors(rules: Any, fragment: str) -> None:
    with pytest.raises(LezaConfigError, match=fragment):
        parse_rules(rules)


def test_patterns_match_method_and_path() -> None:
    from leza_middleware.permissions import Permissions

    perms = Permissions(parse_rules(RULES), "app")
    assert perms.required("GET", "/tracking") == "Live Tracking Page Permission"
    assert perms.required("GET", "/tracking/7/history") == "Live Tracking Page Permission"
    assert perms.required("POST", "/tracking") is None
    assert perms.required("DELETE", "/admin/x") == "Admin Permission"
    assert perms.required("GET", "/trackingx") is None
    assert perms.required("GET", "/public") is None
    assert perms.required("HEAD", "/tracking") == "Live Tracking Page Permission"  # GET's view


def test_a_protected_websocket_is_decided_at_the_handshake(make_leza: Any) -> None:
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    opened: list[str] = []

    async def live(websocket: WebSocket) -> None:
        opened.append(websocket.headers.get("x-user", ""))
        await websocket.accept()
        await websocket.send_text("tracking")
        await websocket.close()

    leza = make_leza(permissions=RULES, performer=who)
    app = LezaMiddleware(Starlette(routes=[WebSocketRoute("/tracking", live)]), leza=leza)
    with TestClient(app) as client:
        with client.websocket_connect("/tracking", headers={"x-user": "ops"}) as ws:
            assert ws.receive_text() == "tracking"
        for user in ("guest", ""):
            with (
                pytest.raises(WebSocketDisconnect) as refused,
                client.websocket_connect("/tracking", headers={"x-user": user}),
            ):
                pass
            assert refused.value.code == 1008
    assert opened == ["ops"]  # refused handshakes never reached the app
    ok, lacks, unauth = events(leza)
    assert (ok["endpoint_type"], ok["status"], ok["action"]) == ("WS", 101, "access")
    assert ok["reason"].startswith("User has the permission Live Tracking Page Permission")
    assert (lacks["status"], lacks["action"]) == (403, "denied")
    assert lacks["reason"].startswith("User lacks the permission Live Tracking Page Permission")
    assert lacks["performer"]["id"] == "u-guest"
    assert (unauth["status"], unauth["action"]) == (403, "denied")
    assert unauth["reason"].startswith("Authentication required for the permission")


def test_a_failing_permission_hook_is_a_recorded_500_and_the_app_is_not_called(
    make_leza: Any,
) -> None:
    def has_permission(performer: Performer, request: Any, permission: str) -> bool:
        raise RuntimeError("directory down")

    leza = make_leza(permissions=RULES, performer=who, has_permission=has_permission)
    app, ran = app_with(leza)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/tracking", headers={"x-user": "ops"}).status_code == 500
    assert ran == []
    (event,) = events(leza)
    assert (event["status"], event["outcome"]) == (500, "error")
    assert event["performer"]["id"] == "u-ops"


@pytest.mark.anyio
async def test_a_malformed_scope_never_skips_the_permission_decision(make_leza: Any) -> None:
    # A broken layer in front (header pairs that are not pairs) costs the
    # request its headers, not its authorization.
    leza = make_leza(permissions=RULES, performer=lambda request: None)
    ran: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = LezaMiddleware(app, leza=leza)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for path in ("/admin/users", "/public"):
        scope = {
            "type": "http", "method": "GET", "path": path, "query_string": b"",
            "headers": [(b"x-broken",)], "client": ("127.0.0.1", 5000),
        }  # fmt: skip
        await middleware(scope, receive, send)
    assert ran == ["/public"]  # served unrecorded, as before; the protected one refused
    assert sent[0]["status"] == 401
    assert leza.stats()["request_path_errors"] == 2
    (event,) = events(leza)
    assert (event["endpoint"], event["status"], event["action"]) == ("/admin/users", 401, "denied")
