"""A small Flask app recorded by leza-middleware.

Run it (from the repository root, with ``pip install -e '.[flask]'``)::

    python examples/flask_app/app.py

then try, in another shell::

    curl -H 'X-Demo-User: alice' localhost:5000/items/42
    curl localhost:5000/admin                      # 403: recorded as "denied"
    curl -H 'X-Demo-User: root' localhost:5000/admin
    curl localhost:5000/leza/recent                # the newest access events, as JSON
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, abort, g, jsonify, request, stream_with_context

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
    app.config["LEZA_STORAGE"] = f"sqlite:///{os.path.join(HERE, 'leza-example.db')}"
    app.config["LEZA_APP_NAME"] = "flask-example"
    app.config.update(config or {})

    leza.init_app(app)  # the one line: every request is now recorded

    @app.before_request
    def load_user() -> None:
        # Demo authentication from a header; a real app reads its session.
        # leza takes the performer from g.user after the request.
        g.user = USERS.get(request.headers.get("X-Demo-User", ""))

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

    return app


if __name__ == "__main__":
    create_app().run(port=int(os.environ.get("PORT", "5000")))
