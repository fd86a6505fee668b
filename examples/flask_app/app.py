"""A small Flask app recorded by leza-middleware.

Run it (from the repository root, with ``pip install -e '.[flask]'``)::

    python examples/flask_app/app.py

then try, in another shell::

    curl -H 'X-Demo-User: alice' localhost:5000/items/42
    curl localhost:5000/admin                      # 403: recorded as "denied"
    curl -H 'X-Demo-User: root' localhost:5000/admin
    curl localhost:5000/leza/recent                # the newest access events, as JSON

and a signed-in browser session (a cookie jar), its logout, and the session list::

    curl -c jar -b jar -X POST localhost:5000/login/alice   # action "login": a session starts
    curl -c jar -b jar localhost:5000/items/7
    curl localhost:5000/leza/sessions              # alice's session: device, geo, machine id
    curl -c jar -b jar localhost:5000/logout       # action "logout": the session ends
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    request,
    session,
    stream_with_context,
)

from leza_middleware import Leza

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class User:
    # Any object with id / name / email works; a Performer or a dict does too.
    # (With Flask-Login, its current_user is picked up without any of this.)
    id: str
    name: str
    email: str
    admin: bool = False


USERS = {
    "alice": User("u-1", "Alice", "alice@example.com"),
    "root": User("u-0", "Root", "root@example.com", admin=True),
}


# One Leza for the process; each app created below configures it from its
# app.config (LEZA_* keys) in init_app.
leza = Leza()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    # Signs Flask's session cookie; leza's own key signs the machine-id cookie
    # and keys session ids. Both must come from your secrets in production.
    app.secret_key = os.environ.get("FLASK_SECRET_KEY", "example-only: change me")
    app.config["LEZA_SECRET_KEY"] = os.environ.get("LEZA_SECRET_KEY", "example-only: change me")
    app.config["LEZA_STORAGE"] = f"sqlite:///{os.path.join(HERE, 'leza-example.db')}"
    app.config["LEZA_APP_NAME"] = "flask-example"
    # A request to a logout route is recorded as action "logout" and ends the session.
    app.config["LEZA_LOGOUT_ROUTES"] = ["GET /logout"]
    app.config.update(config or {})

    leza.init_app(app)  # the one line: every request is now recorded

    @app.before_request
    def load_user() -> None:
        # Demo authentication: the signed-in user of Flask's session, or a
        # header for curl one-liners. leza takes the performer from g.user
        # after the request (with Flask-Login, from current_user).
        name = session.get("user") or request.headers.get("X-Demo-User", "")
        g.user = USERS.get(name)

    @app.post("/login/<name>")
    def login(name: str) -> Any:
        if name not in USERS:
            # Flask-Login has no signal for a failed sign-in; say it yourself.
            leza.sessions.login_failed("Unknown user", username=name)
            abort(401)
        session.clear()
        session["user"] = name
        g.user = USERS[name]
        leza.sessions.login()  # action "login"; a new session for this browser
        return redirect("/items/1")

    @app.get("/logout")
    def logout() -> Any:
        session.clear()  # the configured logout route records the logout
        return redirect("/")

    @app.get("/")
    def home() -> str:
        return "hello\n"

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Response:
        return jsonify(id=item_id)  # recorded with route "/items/{item_id}"

    @app.get("/admin")
    def admin() -> str:
        if g.user is None or not g.user.admin:
            abort(403)
        return "welcome, admin\n"

    @app.get("/stream")
    def stream() -> Response:
        def lines() -> Iterator[str]:
            for i in range(3):
                yield f"line {i}\n"

        # recorded when the last line has been sent
        return Response(stream_with_context(lines()), mimetype="text/plain")

    @app.get("/leza/recent")
    def recent() -> Response:
        leza.flush(timeout=2.0)  # a demo shortcut: show this moment's events
        return jsonify(leza.query.access(limit=10))

    @app.get("/leza/sessions")
    def sessions() -> Response:
        # Anyone may look in this demo; protect it in a real app. An admin
        # revokes one with leza.sessions.revoke(session_id): that browser's
        # next request gets 401, even replaying a copy of its session cookie.
        leza.flush(timeout=2.0)
        return jsonify(leza.sessions.active())

    return app


if __name__ == "__main__":
    create_app().run(port=int(os.environ.get("PORT", "5000")))
