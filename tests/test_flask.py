"""Flask through ``leza.init_app(app)``: real apps via ``app.test_client()``."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from wsgiref.util import FileWrapper

import pytest
from flask import Flask, Response, abort, g, request, send_file, stream_with_context

from leza_middleware import Leza, LezaConfigError, LezaWSGIMiddleware, Performer
from leza_middleware.context import current_request_id
from leza_middleware.integrations.flask import config_settings

ROOT = Path(__file__).resolve().parents[1]


def make_app(data_file: Path | None = None) -> Flask:
    app = Flask(__name__)

    @app.before_request
    def load_user() -> None:
        name = request.headers.get("X-User")
        if name:  # a plain object without is_authenticated: set means signed in
            g.user = SimpleNamespace(id=f"u-{name}", name=name.title(), email=f"{name}@ex.com")

    @app.get("/")
    def home() -> str:
        return "hi"

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, "rid": current_request_id()}

    @app.get("/admin")
    def admin() -> str:
        abort(403)

    @app.get("/boom")
    def boom() -> str:
        raise ValueError("kaput")

    @app.get("/stream")
    def stream() -> Response:
        @stream_with_context
        def lines() -> Iterator[str]:
            for i in range(int(request.args.get("n", "3"))):  # needs the request context
                yield f"line {i}\n"

        return Response(lines(), mimetype="text/plain")

    @app.get("/file")
    def file() -> Response:
        assert data_file is not None
        return send_file(data_file, mimetype="application/octet-stream")

    return app


def events_of(leza: Leza) -> list[dict[str, Any]]:
    assert leza.flush(5)
    events: list[dict[str, Any]] = leza.query.access()
    return events


def by_path(leza: Leza) -> dict[str, dict[str, Any]]:
    return {e["endpoint"]: e for e in events_of(leza)}


@pytest.fixture
def bare_leza() -> Iterator[Callable[..., Leza]]:
    """``Leza(...)`` as an app would build it (nothing preset); all shut down after."""
    made: list[Leza] = []

    def factory(**kwargs: Any) -> Leza:
        made.append(Leza(**kwargs))
        return made[-1]

    yield factory
    for leza in made:
        leza.shutdown(timeout=2)


def test_one_line_setup_route_template_and_performer_from_g_user(make_leza: Any) -> None:
    leza = make_leza()
    app = make_app()
    leza.init_app(app)
    assert isinstance(app.wsgi_app, LezaWSGIMiddleware)
    assert app.extensions["leza"] is leza
    assert app.leza is leza  # type: ignore[attr-defined]
    client = app.test_client()
    r = client.get("/items/42?x=1", headers={"X-User": "zoe", "User-Agent": "curl/8.0"})
    assert r.status_code == 200
    assert r.json is not None
    assert r.json["rid"] == r.headers["X-Request-ID"]  # current inside the view
    client.get("/")
    client.get("/nope")
    events = by_path(leza)
    item = events["/items/42?x=1"]
    assert item["route"] == "/items/{item_id}"
    assert item["request_id"] == r.headers["X-Request-ID"]
    assert item["performer"]["id"] == "u-zoe"
    assert item["performer"]["name"] == "Zoe"
    assert item["performer"]["email"] == "zoe@ex.com"
    assert events["/"]["route"] == "/"
    assert events["/"]["performer"] is None
    assert events["/nope"]["status"] == 404
    assert events["/nope"]["route"] is None  # no rule matched


def test_abort_403_is_denied(make_leza: Any) -> None:
    leza = make_leza()
    app = make_app()
    leza.init_app(app)
    assert app.test_client().get("/admin").status_code == 403
    [event] = events_of(leza)
    assert event["action"] == "denied"
    assert event["outcome"] == "denied"
    assert event["route"] == "/admin"


@pytest.mark.parametrize("testing", [False, True])
def test_unhandled_exception_recorded_as_500(make_leza: Any, testing: bool) -> None:
    leza = make_leza()
    app = make_app()
    app.testing = testing  # True: Flask re-raises it through the middleware
    leza.init_app(app)
    client = app.test_client()
    if testing:
        with pytest.raises(ValueError, match="kaput"):
            client.get("/boom", headers={"X-User": "ann"})
    else:
        assert client.get("/boom", headers={"X-User": "ann"}).status_code == 500
    [event] = events_of(leza)
    assert event["status"] == 500
    assert event["outcome"] == "error"
    assert "ValueError" in event["reason"]  # even when Flask made the 500 page itself
    assert event["route"] == "/boom"
    assert event["performer"]["id"] == "u-ann"


def test_streamed_with_context_recorded_after_the_stream(make_leza: Any) -> None:
    leza = make_leza()
    app = make_app()
    leza.init_app(app)
    r = app.test_client().get("/stream?n=4", headers={"X-User": "sam"}, buffered=False)
    assert leza.flush(5)
    assert leza.stats()["enqueued"] == 0  # the body has not been read yet
    assert r.get_data() == b"".join(b"line %d\n" % i for i in range(4))
    r.close()
    [event] = events_of(leza)
    assert event["status"] == 200
    assert event["route"] == "/stream"
    assert event["performer"]["id"] == "u-sam"


@pytest.mark.parametrize("server_wrapper", [None, FileWrapper])
def test_send_file(make_leza: Any, tmp_path: Path, server_wrapper: Any) -> None:
    data = bytes(range(256)) * 64
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    leza = make_leza()
    app = make_app(path)
    leza.init_app(app)
    client = app.test_client()
    # With a server's wsgi.file_wrapper (wsgiref, gunicorn) send_file returns that
    # wrapper, which must reach the server as such; else Werkzeug's own is iterated.
    environ = {} if server_wrapper is None else {"wsgi.file_wrapper": server_wrapper}
    with client.get("/file", environ_base=environ) as r:
        assert r.status_code == 200
        assert r.get_data() == data
    with client.head("/file", environ_base=environ) as head:  # closing it closes the file
        assert head.status_code == 200
        assert head.get_data() == b""
    events = events_of(leza)
    assert [(e["endpoint_type"], e["status"], e["route"]) for e in events] == [
        ("HEAD", 200, "/file"),
        ("GET", 200, "/file"),
    ]


def test_performer_hook_runs_in_the_request_context(make_leza: Any) -> None:
    from flask import Request

    received: list[Any] = []

    def who(req: Any) -> Performer | None:
        received.append(isinstance(req, Request))
        user = g.get("user")  # flask.g works: called before the context is torn down
        return Performer(id=f"hook-{user.id}", role_name="admin") if user else None

    leza = make_leza(performer=who)
    app = make_app()
    leza.init_app(app)
    client = app.test_client()
    client.get("/", headers={"X-User": "kim"})
    client.get("/items/1")
    events = by_path(leza)
    assert events["/"]["performer"]["id"] == "hook-u-kim"
    assert events["/"]["performer"]["role_name"] == "admin"
    assert events["/items/1"]["performer"] is None
    assert received == [True, True]
    assert leza.stats()["performer_hook_errors"] == 0


def test_g_user_as_row_mapping_or_performer(make_leza: Any) -> None:
    leza = make_leza()
    app = Flask(__name__)
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("create table user (id integer, username text, password text)")
    db.execute("insert into user values (7, 'tutorial', 'pbkdf2:secret-hash')")

    @app.get("/<kind>")
    def view(kind: str) -> str:
        if kind == "row":  # the Flask tutorial's g.user
            g.user = db.execute("select * from user").fetchone()
        elif kind == "dict":
            g.user = {"id": 8, "name": "Dee", "email": "dee@ex.com"}
        elif kind == "performer":
            g.user = Performer(id="p-9", organization_name="Acme")
        elif kind == "anonymous":
            g.user = SimpleNamespace(is_authenticated=False, id=1)
        return kind

    leza.init_app(app)
    client = app.test_client()
    for kind in ("row", "dict", "performer", "anonymous"):
        client.get(f"/{kind}")
    db.close()
    events = by_path(leza)
    assert events["/row"]["performer"]["id"] == "7"
    assert events["/row"]["performer"]["name"] == "tutorial"
    assert "secret-hash" not in repr(events["/row"])
    assert events["/dict"]["performer"]["email"] == "dee@ex.com"
    assert events["/performer"]["performer"]["organization_name"] == "Acme"
    assert events["/anonymous"]["performer"] is None


def test_flask_login_user(make_leza: Any) -> None:
    import flask_login  # the test extra has it

    class User(flask_login.UserMixin):  # type: ignore[misc]
        def __init__(self, uid: str) -> None:
            self.id = uid
            self.name = f"User {uid}"
            self.email = f"{uid}@ex.com"

    app = make_app()
    app.secret_key = "test-secret-key-0123456789"
    manager = flask_login.LoginManager(app)
    manager.user_loader(lambda uid: User(uid))

    @app.get("/login/<uid>")
    def login(uid: str) -> str:
        flask_login.login_user(User(uid))
        return "in"

    @app.get("/private")
    @flask_login.login_required
    def private() -> str:
        return "secret"

    @app.get("/logout")
    def logout() -> str:
        flask_login.logout_user()
        return "out"

    leza = make_leza()
    leza.init_app(app)
    client = app.test_client()
    client.get("/private")  # not logged in: 401
    client.get("/login/42")
    client.get("/private")  # current_user loaded by login_required
    client.get("/")  # the view never touches current_user: the session's user id
    client.get("/logout")
    client.get("/items/3")
    events = [(e["endpoint"], e["status"], e["performer"]) for e in reversed(events_of(leza))]
    assert [(path, status) for path, status, _ in events] == [
        ("/private", 401),
        ("/login/42", 200),
        ("/private", 200),
        ("/", 200),
        ("/logout", 200),
        ("/items/3", 200),
    ]
    performers = [p and (p["id"], p["name"], p["email"]) for _, _, p in events]
    assert performers == [
        None,
        ("42", "User 42", "42@ex.com"),
        ("42", "User 42", "42@ex.com"),
        ("42", "", ""),
        ("42", "User 42", "42@ex.com"),  # who left, from Flask-Login's signal
        None,
    ]
    actions = [e["action"] for e in reversed(events_of(leza))]
    assert actions == ["denied", "login", "access", "access", "logout", "access"]


def test_init_app_reads_app_config(
    bare_leza: Callable[..., Leza], tmp_path: Path, city_db: Path
) -> None:
    db = tmp_path / "flask.db"
    app = make_app()
    app.config.update(
        LEZA_STORAGE=f"sqlite:///{db}",
        LEZA_GEOIP_DB=str(city_db),
        LEZA_APP_NAME="shop",
        LEZA_TRUSTED_PROXIES="127.0.0.1",
        LEZA_SPILL_DIR=str(tmp_path / "spill"),
        LEZA_FLUSH_INTERVAL="0.05",
    )
    leza = bare_leza()  # built before the app's config is known: the Flask pattern
    leza.init_app(app)
    assert str(db) in leza.storage.describe()
    assert leza.settings.trusted_proxies == ("127.0.0.1",)
    app.test_client().get("/", headers={"X-Forwarded-For": "81.2.69.142"})
    [event] = events_of(leza)
    assert event["app"] == "shop"
    assert event["ip"] == "81.2.69.142"  # through the trusted proxy from the config
    assert event["geoLocationInfoOfIp"]["country_code"] == "GB"
    assert db.exists()


def test_app_config_splits_storage_by_kind(bare_leza: Callable[..., Leza], tmp_path: Path) -> None:
    main, access = tmp_path / "main.db", tmp_path / "access.db"
    app = make_app()
    app.config.update(
        LEZA_STORAGE=f"sqlite:///{main}",
        LEZA_STORAGE_ACCESS=f"sqlite:///{access}",
        LEZA_SPILL_DIR=str(tmp_path / "spill"),
        LEZA_FLUSH_INTERVAL="0.05",
    )
    leza = bare_leza()
    leza.init_app(app)
    assert leza.settings.storage == {
        "access": f"sqlite:///{access}",
        "default": f"sqlite:///{main}",
    }
    app.test_client().get("/")
    assert len(events_of(leza)) == 1
    assert access.exists()
    app.config["LEZA_STORAGE_ACSESS"] = "memory://"
    with pytest.raises(LezaConfigError, match="LEZA_STORAGE_ACSESS"):
        config_settings(app.config)


def test_explicit_arguments_win_over_app_config(
    bare_leza: Callable[..., Leza], tmp_path: Path
) -> None:
    app = make_app()
    app.config.update(
        LEZA_STORAGE=f"sqlite:///{tmp_path / 'cfg.db'}", LEZA_APP_NAME="cfg", LEZA_GEOIP_DB="off"
    )
    leza = bare_leza(app_name="explicit", spill_dir=str(tmp_path / "spill"))
    leza.init_app(app)
    assert leza.settings.app_name == "explicit"
    assert "cfg.db" in leza.storage.describe()


def test_init_app_errors_are_clear(make_leza: Any, bare_leza: Callable[..., Leza]) -> None:
    app = make_app()
    app.config["LEZA_STORAGEE"] = "sqlite:///typo.db"
    with pytest.raises(LezaConfigError, match="LEZA_STORAGEE"):
        make_leza().init_app(app)

    app = make_app()
    app.config["LEZA_BATCH_SIZE"] = "lots"
    with pytest.raises(LezaConfigError, match="batch_size"):
        make_leza().init_app(app)

    # once a Leza has recorded, another app's config may not move it elsewhere
    leza = make_leza()
    first = make_app()
    leza.init_app(first)
    first.test_client().get("/")
    second = make_app()
    second.config["LEZA_APP_NAME"] = "other"
    with pytest.raises(LezaConfigError, match="already recorded"):
        leza.init_app(second)
    # the same settings are fine: one Leza may serve several apps
    third = make_app()
    leza.init_app(third)
    third.test_client().get("/items/1")
    assert len(events_of(leza)) == 2

    # one app, one Leza
    with pytest.raises(LezaConfigError, match="another Leza"):
        make_leza().init_app(first)


def test_a_bad_app_config_leaves_the_leza_as_it_was(
    bare_leza: Callable[..., Leza], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEZA_STORAGE", f"sqlite:///{tmp_path / 'env.db'}")
    leza = bare_leza(geoip_db=False)
    storage, settings, recorder = leza.storage, leza.settings, leza.recorder
    app = make_app()
    app.config.update(LEZA_APP_NAME="new-name", LEZA_STORAGE="nosuchdb://x")
    with pytest.raises(LezaConfigError, match="nosuchdb"):
        leza.init_app(app)
    assert (leza.storage, leza.settings, leza.recorder) == (storage, settings, recorder)
    assert "leza" not in app.extensions
    assert not isinstance(app.wsgi_app, LezaWSGIMiddleware)


def test_init_app_twice_records_once(make_leza: Any) -> None:
    leza = make_leza()
    app = make_app()
    leza.init_app(app)
    leza.init_app(app)
    app.test_client().get("/")
    assert len(events_of(leza)) == 1
    # a wsgi_app already wrapped by hand is not wrapped again
    manual = make_app()
    manual.wsgi_app = LezaWSGIMiddleware(manual.wsgi_app, leza=leza)  # type: ignore[method-assign]
    leza.init_app(manual)
    manual.test_client().get("/items/5")
    events = events_of(leza)
    assert len(events) == 2
    assert events[0]["route"] == "/items/{item_id}"


def test_example_app(tmp_path: Path, city_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location(
        "leza_flask_example", ROOT / "examples" / "flask_app" / "app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as an import would (dataclasses)
    spec.loader.exec_module(module)
    app = module.create_app(
        {
            "LEZA_STORAGE": f"sqlite:///{tmp_path / 'example.db'}",
            "LEZA_GEOIP_DB": str(city_db),
            "LEZA_SPILL_DIR": str(tmp_path / "spill"),
        }
    )
    try:
        client = app.test_client()
        client.environ_base["HTTP_ACCEPT"] = "text/html"  # a browser: it gets a machine id
        assert client.get("/items/42", headers={"X-Demo-User": "alice"}).status_code == 200
        assert client.get("/admin").status_code == 403
        assert client.get("/admin", headers={"X-Demo-User": "root"}).status_code == 200
        recent = client.get("/leza/recent").json
        assert [(e["endpoint"], e["status"]) for e in recent] == [
            ("/admin", 200),
            ("/admin", 403),
            ("/items/42", 200),
        ]
        assert recent[2]["route"] == "/items/{item_id}"
        assert recent[2]["performer"]["name"] == "Alice"
        assert recent[1]["action"] == "denied"
        assert recent[0]["app"] == "flask-example"
        # a browser session: login, a request, the session list, logout
        client = app.test_client()  # a new browser
        client.environ_base["HTTP_ACCEPT"] = "text/html"
        active = {s["_id"] for s in client.get("/leza/sessions").json}  # the header's users
        assert client.post("/login/alice").status_code == 302
        assert client.get("/items/7").status_code == 200
        [session] = [s for s in client.get("/leza/sessions").json if s["_id"] not in active]
        assert session["performer"]["name"] == "Alice"
        assert session["machine_identifier"]
        assert client.get("/logout").status_code == 302
        assert client.post("/login/mallory").status_code == 401
        assert {s["_id"] for s in client.get("/leza/sessions").json} == active
        actions = [(e["endpoint"], e["action"]) for e in client.get("/leza/recent").json]
        assert actions[:5] == [
            ("/leza/sessions", "access"),
            ("/login/mallory", "login_failed"),
            ("/logout", "logout"),
            ("/leza/sessions", "access"),
            ("/items/7", "access"),
        ]
        assert actions[5] == ("/login/alice", "login")
    finally:
        module.leza.shutdown(2)
