"""Starlette's signed-cookie sessions: a revoked or logged-out session stays dead
even when its SessionMiddleware cookie is replayed without Leza's own cookie."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from leza_middleware import Leza, LezaMiddleware, Performer
from leza_middleware.integrations.starlette import SESSION_BINDING_KEY, LezaSessionBinding


class SessionUser(AuthenticationBackend):
    async def authenticate(self, conn: Any) -> Any:
        name = conn.session.get("user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def make_app(leza: Leza) -> Starlette:
    async def login(request: Request) -> PlainTextResponse:
        name = request.path_params["name"]
        request.session["user"] = name
        leza.sessions.login(Performer(id=name, name=name))
        return PlainTextResponse("in")

    async def logout(request: Request) -> PlainTextResponse:
        request.session.pop("user", None)
        return PlainTextResponse("out")

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello {request.user.display_name}")

    app = Starlette(
        routes=[Route("/login/{name}", login, methods=["POST"]), Route("/logout", logout),
                Route("/page", page)]
    )  # fmt: skip
    app.add_middleware(LezaSessionBinding, leza=leza)  # inside SessionMiddleware
    app.add_middleware(AuthenticationMiddleware, backend=SessionUser())
    app.add_middleware(SessionMiddleware, secret_key="starlette-test-secret")
    app.add_middleware(LezaMiddleware, leza=leza)
    return app


def events(leza: Leza) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return list(reversed(leza.query.access()))


def test_session_is_bound_into_the_framework_session(make_leza: Any) -> None:
    leza = make_leza(logout_routes=["GET /logout"])
    with TestClient(make_app(leza)) as client:
        client.post("/login/alice")
        assert "leza_sid" not in client.cookies  # the framework's session carries it
        assert client.get("/page").text == "hello alice"
        leza.flush(5)
        [session] = leza.sessions.active()
        assert session["performer"]["id"] == "alice"
        ids = {e["session_id_hash"] for e in events(leza)}
        assert ids == {session["_id"]}
        client.get("/logout")
    leza.flush(5)
    assert leza.sessions.get(session["_id"])["end_reason"] == "logout"  # type: ignore[index]


def test_replayed_starlette_cookie_is_refused_after_revocation(make_leza: Any) -> None:
    leza = make_leza()
    app = make_app(leza)
    with TestClient(app) as victim:
        victim.post("/login/alice")
        victim.get("/page")
        stolen = victim.cookies["session"]
        leza.flush(5)
        [session] = leza.sessions.active()
        assert leza.sessions.revoke(session["_id"])
        refused = victim.get("/page")
        assert refused.status_code == 401
    with TestClient(app, cookies={"session": stolen}) as attacker:  # no leza cookie at all
        replay = attacker.get("/page")
    assert replay.status_code == 401
    last = events(leza)[-1]
    assert last["action"] == "denied"
    assert last["reason"] == "session revoked"
    assert last["session_id_hash"] == session["_id"]


def test_refusal_empties_the_framework_session(make_leza: Any) -> None:
    leza = make_leza()
    with TestClient(make_app(leza)) as client:
        client.post("/login/bob")
        leza.flush(5)
        leza.sessions.revoke(leza.sessions.active()[0]["_id"])
        assert client.get("/page").status_code == 401
        # signed out for the framework too: the next request is anonymous, not refused
        anonymous = client.get("/page")
    assert anonymous.status_code == 200
    assert anonymous.text == "hello "
    assert SESSION_BINDING_KEY not in anonymous.text


def test_a_restarted_process_refuses_a_replayed_starlette_cookie_from_its_first_request(
    make_leza: Any, tmp_path: Any
) -> None:
    """The framework's cookie alone, against a new process: refused (and emptied)
    when revoked; refused but kept while the blocklist cannot be loaded."""
    leza = make_leza()
    with TestClient(make_app(leza)) as victim:
        victim.post("/login/alice")
        stolen = victim.cookies["session"]
        leza.flush(5)
        [session] = leza.sessions.active()
    assert leza.sessions.revoke(session["_id"])

    restarted = make_leza()  # same storage, nothing loaded yet
    with TestClient(make_app(restarted), cookies={"session": stolen}) as attacker:
        replay = attacker.get("/page")
    assert replay.status_code == 401
    [emptied] = [h for h in replay.headers.get_list("set-cookie") if h.startswith("session=")]
    assert emptied.startswith("session=null")  # emptied: signed out
    assert events(restarted)[-1]["reason"] == "session revoked"

    down = tmp_path / "down.db"
    down.write_bytes(b"not a SQLite database " * 100)
    unknown = make_leza(storage=f"sqlite:///{down}")
    with TestClient(make_app(unknown), cookies={"session": stolen}) as attacker:
        replay = attacker.get("/page")
    assert replay.status_code == 401
    # The session is kept (no new session cookie): its state is only unknown.
    assert not [h for h in replay.headers.get_list("set-cookie") if h.startswith("session=")]
    assert unknown.stats()["revocations"]["refused_unknown"] == 1
