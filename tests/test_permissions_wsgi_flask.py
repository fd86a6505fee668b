"""Endpoint permissions under WSGI and Flask: decided before the app's view runs.

The WSGI middleware decides before it calls the app, with the performer from
the ``performer=`` hook (a plain WSGI app has nothing else to offer before it
runs). Under ``leza.init_app`` Flask decides instead, once the app's own
``before_request`` hooks loaded its user, and the middleware takes no decision.
The cases mirror tests/test_permissions.py (ASGI).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flask_login
import pytest
from flask import Flask, g, request
from werkzeug.test import Client

from leza_middleware import Leza, LezaWSGIMiddleware, Performer

APP = "Insight App"
LIVE = "Live Tracking Page Permission"
ADMIN = "Admin Permission"
ALLOWED = f"User has the permission {LIVE} to access this resource of this application {APP}"
LACKS = f"User lacks the permission {LIVE} to access this resource of this application {APP}"
USERS = {
    "ops": Performer(id="u-ops", name="Ops", permissions=frozenset({LIVE})),
    "guest": Performer(id="u-guest", name="Guest"),
}
RULES = {
    LIVE: ["GET /tracking", "GET /tracking/*"],
    ADMIN: ["/admin/*"],
}


def who(request: Any) -> Performer | None:
    return USERS.get(request.headers.get("x-user", ""))


def events(leza: Leza) -> list[dict[str, Any]]:
    assert leza.flush(5)
    return list(reversed(leza.query.access()))


# ----------------------------------------------------------------------------- plain WSGI


def wsgi_app(leza: Leza) -> tuple[Client, list[str]]:
    ran: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        ran.append(environ.get("SCRIPT_NAME", "") + environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return Client(LezaWSGIMiddleware(app, leza=leza)), ran


def test_wsgi_allowed_denied_and_unauthenticated(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES, performer=who, app_name=APP)
    client, ran = wsgi_app(leza)
    assert client.get("/tracking/42", headers={"x-user": "ops"}).status_code == 200
    denied = client.get("/tracking", headers={"x-user": "guest"})
    anonymous = client.post("/admin/users")
    assert client.get("/public").status_code == 200
    assert denied.status_code == 403
    assert anonymous.status_code == 401
    assert ran == ["/tracking/42", "/public"]  # refused requests never reached the app
    ok, lacks, unauth, public = events(leza)
    assert (ok["action"], ok["reason"]) == ("access", ALLOWED)
    assert (lacks["action"], lacks["status"], lacks["reason"]) == ("denied", 403, LACKS)
    assert lacks["performer"]["id"] == "u-guest"
    assert denied.json == {"detail": LACKS}
    assert denied.headers["Content-Type"] == "application/json"
    assert denied.headers["X-Request-ID"] == lacks["request_id"]
    assert int(denied.headers["Content-Length"]) == len(denied.data)
    assert (unauth["action"], unauth["status"]) == ("denied", 401)
    assert unauth["reason"] == (
        f"Authentication required for the permission {ADMIN} "
        f"to access this resource of this application {APP}"
    )
    assert anonymous.json == {"detail": unauth["reason"]}
    assert public["reason"] == "Request completed: 200 OK"  # unprotected: derived from status


def test_wsgi_has_permission_hook_decides_with_a_werkzeug_request(make_leza: Any) -> None:
    asked: list[tuple[str, str, str]] = []

    def has_permission(performer: Performer, request: Any, permission: str) -> bool:
        asked.append((performer.id, request.path, permission))
        return performer.id == "u-guest"

    leza = make_leza(permissions=RULES, performer=who, has_permission=has_permission)
    client, ran = wsgi_app(leza)
    assert client.get("/tracking", headers={"x-user": "guest"}).status_code == 200
    assert client.get("/tracking", headers={"x-user": "ops"}).status_code == 403
    assert asked == [("u-guest", "/tracking", LIVE), ("u-ops", "/tracking", LIVE)]
    assert ran == ["/tracking"]


def test_wsgi_without_a_performer_hook_fails_closed(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES)
    client, ran = wsgi_app(leza)
    # Whatever the request says about its user: nothing tells the middleware who it is.
    assert client.get("/tracking", headers={"x-user": "ops"}).status_code == 401
    assert client.get("/public").status_code == 200
    assert ran == ["/public"]
    unauth, public = events(leza)
    assert (unauth["action"], unauth["status"]) == ("denied", 401)
    assert public["action"] == "access"


def test_wsgi_a_performer_from_an_outer_layer_counts(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    inner = LezaWSGIMiddleware(app, leza=leza)

    def outer(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["leza.performer"] = USERS.get(environ.get("HTTP_X_USER", ""))
        return inner(environ, start_response)

    client = Client(outer)
    assert client.get("/tracking", headers={"x-user": "ops"}).status_code == 200
    assert client.get("/tracking", headers={"x-user": "guest"}).status_code == 403


def test_wsgi_rules_match_with_or_without_the_mount_prefix(make_leza: Any) -> None:
    leza = make_leza(permissions={LIVE: ["GET /tracking"], ADMIN: ["/api/admin/*"]}, performer=who)
    client, ran = wsgi_app(leza)
    # Mounted under /api: PATH_INFO is app-relative, SCRIPT_NAME the prefix.
    mounted = {"SCRIPT_NAME": "/api"}
    assert client.get("/tracking", environ_overrides=mounted).status_code == 401
    assert client.get("/admin/x", environ_overrides=mounted).status_code == 401
    assert client.get("/other", environ_overrides=mounted).status_code == 200
    assert ran == ["/api/other"]


def test_wsgi_head_needs_what_get_needs(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES, performer=who)
    client, ran = wsgi_app(leza)
    assert client.head("/tracking").status_code == 401
    assert client.head("/tracking", headers={"x-user": "guest"}).status_code == 403
    assert client.head("/tracking", headers={"x-user": "ops"}).status_code == 200
    assert client.options("/tracking").status_code == 200  # only GET (and HEAD) protected
    assert ran == ["/tracking", "/tracking"]


def test_wsgi_a_failing_decision_is_recorded_and_the_app_not_called(make_leza: Any) -> None:
    def has_permission(performer: Performer, request: Any, permission: str) -> bool:
        raise RuntimeError("permission service down")

    leza = make_leza(permissions=RULES, performer=who, has_permission=has_permission)
    client, ran = wsgi_app(leza)
    with pytest.raises(RuntimeError, match="service down"):
        client.get("/tracking", headers={"x-user": "ops"})
    assert ran == []
    (event,) = events(leza)
    assert event["status"] == 500
    assert "RuntimeError" in event["reason"]


def test_wsgi_permissions_are_not_stored_with_the_performer(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES, performer=who)
    client, _ = wsgi_app(leza)
    client.get("/tracking", headers={"x-user": "ops"})
    assert "permissions" not in events(leza)[0]["performer"]


# ----------------------------------------------------------------------------- Flask


class User(flask_login.UserMixin):  # type: ignore[misc]
    def __init__(self, uid: str) -> None:
        self.id = uid
        self.name = uid.title()
        self.permissions = {LIVE} if uid == "ops" else set()


def flask_login_app(leza: Leza) -> tuple[Flask, list[str]]:
    """Flask-Login: the user is loaded for the decision (no view touched it yet)."""
    ran: list[str] = []
    app = Flask(__name__)
    app.secret_key = "flask-secret-key-0123456789"
    manager = flask_login.LoginManager(app)
    manager.user_loader(User)
    leza.init_app(app)

    @app.post("/login/<uid>")
    def login(uid: str) -> str:
        flask_login.login_user(User(uid))
        return "in"

    @app.get("/logout")
    def logout() -> str:
        ran.append(request.path)
        flask_login.logout_user()
        return "out"

    @app.route("/tracking")
    @app.route("/tracking/<vehicle>")
    @app.route("/admin/<page>", methods=["GET", "POST"])
    @app.route("/public")
    def page(**kwargs: str) -> str:
        ran.append(request.path)
        return "ok"

    return app, ran


def tutorial_app(leza: Leza) -> tuple[Flask, list[str]]:
    """``g.user`` set by the app's own before_request, registered after init_app."""
    ran: list[str] = []
    app = Flask(__name__)
    leza.init_app(app)

    @app.before_request
    def load_user() -> None:
        name = request.headers.get("x-user")
        g.user = None
        if name == "ops":
            g.user = {"id": "u-ops", "name": "Ops", "permissions": [LIVE]}
        elif name == "guest":
            g.user = {"id": "u-guest", "name": "Guest"}

    @app.route("/tracking")
    @app.route("/admin/<page>", methods=["GET", "POST"])
    @app.route("/public")
    def page(**kwargs: str) -> str:
        ran.append(request.path)
        return "ok"

    return app, ran


def test_flask_login_allowed_denied_and_unauthenticated(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES, app_name=APP)
    app, ran = flask_login_app(leza)
    ops, guest, anonymous = app.test_client(), app.test_client(), app.test_client()
    ops.post("/login/ops")
    guest.post("/login/guest")
    assert ops.get("/tracking/42").status_code == 200
    denied = guest.get("/tracking")
    unauth = anonymous.post("/admin/users")
    assert anonymous.get("/public").status_code == 200
    assert denied.status_code == 403
    assert unauth.status_code == 401
    assert ran == ["/tracking/42", "/public"]  # refused requests never reached the view
    _, _, ok, lacks, no_user, public = events(leza)
    assert (ok["action"], ok["reason"], ok["performer"]["id"]) == ("access", ALLOWED, "ops")
    assert ok["route"] == "/tracking/{vehicle}"
    assert (lacks["action"], lacks["status"], lacks["reason"]) == ("denied", 403, LACKS)
    assert lacks["performer"]["id"] == "guest"
    assert denied.json == {"detail": LACKS}
    assert denied.headers["X-Request-ID"] == lacks["request_id"]
    assert (no_user["action"], no_user["status"]) == ("denied", 401)
    assert no_user["reason"].startswith(f"Authentication required for the permission {ADMIN}")
    assert no_user["performer"] is None
    assert unauth.json == {"detail": no_user["reason"]}
    assert public["reason"] == "Request completed: 200 OK"


def test_flask_decides_after_the_apps_own_before_request_hooks(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES, app_name=APP)
    app, ran = tutorial_app(leza)
    client = app.test_client()
    assert client.get("/tracking", headers={"x-user": "ops"}).status_code == 200
    assert client.get("/tracking", headers={"x-user": "guest"}).status_code == 403
    assert client.get("/tracking").status_code == 401
    assert ran == ["/tracking"]
    ok, lacks, unauth = events(leza)
    assert (ok["reason"], ok["performer"]["id"]) == (ALLOWED, "u-ops")
    assert (lacks["reason"], lacks["performer"]["id"]) == (LACKS, "u-guest")
    assert (unauth["status"], unauth["action"]) == (401, "denied")


def test_flask_decision_is_taken_exactly_once(make_leza: Any) -> None:
    asked: list[str] = []

    def has_permission(performer: Performer, req: Any, permission: str) -> bool:
        asked.append(req.path)
        return performer.id == "u-guest"

    leza = make_leza(permissions=RULES, has_permission=has_permission)
    app, ran = tutorial_app(leza)
    client = app.test_client()
    assert client.get("/tracking", headers={"x-user": "guest"}).status_code == 200
    assert client.get("/tracking", headers={"x-user": "ops"}).status_code == 403
    assert asked == ["/tracking", "/tracking"]  # one decision per request, not two
    assert ran == ["/tracking"]


def test_flask_performer_hook_decides_with_its_permissions(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES, performer=who, app_name=APP)
    app, ran = tutorial_app(leza)
    client = app.test_client()
    # The hook names the performer: g.user (set for "guest" too) is not asked.
    assert client.get("/tracking", headers={"x-user": "ops"}).status_code == 200
    assert client.get("/tracking", headers={"x-user": "guest"}).status_code == 403
    assert ran == ["/tracking"]
    ok, lacks = events(leza)
    assert (ok["reason"], lacks["reason"]) == (ALLOWED, LACKS)


def test_flask_a_before_request_that_answers_leaves_nothing_to_decide(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES)
    app, ran = tutorial_app(leza)

    @app.before_request
    def maintenance() -> Any:
        if request.headers.get("x-maintenance"):
            return "down for maintenance", 503
        return None

    client = app.test_client()
    assert client.get("/tracking", headers={"x-maintenance": "1"}).status_code == 503
    assert ran == []
    (event,) = events(leza)
    assert event["status"] == 503
    assert "permission" not in event["reason"]


def test_flask_a_refused_logout_route_ends_no_session(make_leza: Any) -> None:
    leza = make_leza(permissions={"Sign out": ["/logout"]}, logout_routes=["/logout"])
    app, ran = flask_login_app(leza)
    client = app.test_client()
    client.post("/login/guest")
    refused = client.get("/logout")
    assert refused.status_code == 403
    assert not any("leza_sid=" in c for c in refused.headers.getlist("Set-Cookie"))
    client.get("/public")
    assert ran == ["/public"]
    login, denied, after = events(leza)
    assert (denied["action"], denied["status"]) == ("denied", 403)
    assert login["session_id_hash"] is not None
    assert denied["session_id_hash"] == after["session_id_hash"] == login["session_id_hash"]
    assert [s["performer"]["id"] for s in leza.sessions.active()] == ["guest"]


def test_flask_wsgi_middleware_without_init_app_decides_itself(make_leza: Any) -> None:
    leza = make_leza(permissions=RULES, performer=who)
    app = Flask(__name__)
    ran: list[str] = []

    @app.get("/tracking")
    def tracking() -> str:
        ran.append("tracking")
        return "ok"

    app.wsgi_app = LezaWSGIMiddleware(app.wsgi_app, leza=leza)  # type: ignore[method-assign]
    client = app.test_client()
    ok = client.get("/tracking", headers={"x-user": "ops"})
    assert (ok.status_code, ok.data) == (200, b"ok")  # (recorded once the body is read)
    assert client.get("/tracking", headers={"x-user": "guest"}).status_code == 403
    assert ran == ["tracking"]
    allowed, lacks = events(leza)
    assert (allowed["action"], lacks["action"]) == ("access", "denied")
