"""Privacy: recorded headers, planted secrets, IP anonymisation, retention, erasure.

The acceptance test of issue 8 is :func:`test_planted_secrets_are_never_stored`:
real Starlette, Flask and Django apps get requests carrying secrets in every
place a client or an app can put one, then every column of every ``leza_*``
table (and the raw database file, the spill files and JSON Lines files) is
searched for each planted string.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from conftest import wait_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from leza_middleware import Leza, LezaConfigError, LezaMiddleware, LezaWSGIMiddleware
from leza_middleware.cli import COMMANDS, main
from leza_middleware.config import Settings
from leza_middleware.errors import LezaError
from leza_middleware.events import (
    AccessEvent,
    AdvisoryEvent,
    AuditEvent,
    LogEvent,
    SessionEvent,
)
from leza_middleware.ids import new_event_id
from leza_middleware.performer import Performer
from leza_middleware.privacy import IpAnonymizer
from leza_middleware.redact import DEFAULT as REDACT
from leza_middleware.storage import MemoryStorage, Storage
from leza_middleware.storage.sql import SQLStorage

SECRET_KEY = "tests-secret-key-0123456789"
LONDON_IP = "81.2.69.142"  # in the test City database: London, network 81.2.69.128/26
PROXY = "203.0.113.9"
DAY_US = 86_400 * 1_000_000

# Every planted secret is a distinct string that must appear nowhere in storage.
PLANTED = {
    "authorization": "PLANTED-authz-1c9e",
    "cookie": "PLANTED-cookie-5b21",
    "csrf": "PLANTED-csrf-77aa",
    "api_key": "PLANTED-apikey-0d4f",
    "auth_token": "PLANTED-xauth-9e3b",
    "proxy": "PLANTEDproxyQm9i4x",
    "query_token": "PLANTED-qtoken-3a8c",
    "query_password": "PLANTED-qpass-6f02",
    "referer_token": "PLANTED-ref-41d7",
    "form_password": "PLANTED-form-8b6e",
    "hook_password": "PLANTED-hookpw-2c5d",
    "hook_token": "PLANTED-hooktok-e017",
    "audit_password": "PLANTED-auditpw-94f1",
    "audit_api_key": "PLANTED-auditkey-b3c8",
    "exception": "PLANTED-exc-58da",
}
SECRET_HEADERS = {
    "authorization": f"Bearer {PLANTED['authorization']}",
    "cookie": f"sessionid={PLANTED['cookie']}; csrftoken={PLANTED['csrf']}",
    "x-api-key": PLANTED["api_key"],
    "x-auth-token": PLANTED["auth_token"],
    "proxy-authorization": f"Basic {PLANTED['proxy']}",
    "referer": f"https://app.example/reset?token={PLANTED['referer_token']}&lang=en",
    "accept-language": "en-GB",
    "x-tenant": "acme",
    "x-demo-user": "alice",
}
SECRET_QUERY = f"access_token={PLANTED['query_token']}&password={PLANTED['query_password']}&page=2"
RECORDED = ["accept-language", "referer", "x-tenant"]
ALICE = {"id": "perf-alice-7f3a9c", "name": "Alice Liddell", "email": "alice@example.com"}
BOB = {"id": "perf-bob-2d81e6", "name": "Bob Builder", "email": "bob@example.com"}


def performer_hook(request: Any) -> dict[str, Any] | None:
    """The app's identity, plus fields that must never be stored."""
    if isinstance(request, dict):  # a WSGI environ (log and audit records in Flask)
        who = request.get("HTTP_X_DEMO_USER")
    else:
        who = request.headers.get("x-demo-user")
    person = {"alice": ALICE, "bob": BOB}.get(who or "")
    if person is None:
        return None
    return {
        **person,
        "password": PLANTED["hook_password"],
        "access_token": PLANTED["hook_token"],
        "permissions": ["reports.view"],
    }


# --------------------------------------------------------------------------- scanning


def sql_texts(storage: Storage) -> dict[str, str]:
    """Every value of every column of every ``leza_*`` table, as text, per table."""
    from sqlalchemy import MetaData, Table, inspect, select

    assert isinstance(storage, SQLStorage)
    out: dict[str, str] = {}
    with storage.engine.connect() as conn:
        names = [n for n in inspect(conn).get_table_names() if n.startswith("leza_")]
        meta = MetaData()
        for name in names:
            table = Table(name, meta, autoload_with=conn)
            rows = conn.execute(select(table)).all()
            out[name] = "\n".join("" if v is None else str(v) for row in rows for v in row)
    assert "leza_access" in out
    return out


def files_text(directory: Path) -> dict[str, str]:
    """Every file under ``directory``, raw bytes decoded leniently."""
    return {
        str(p): p.read_bytes().decode("utf-8", "replace")
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def hits(texts: dict[str, str], needles: Any) -> list[tuple[str, str]]:
    """(where, needle) for each needle found (case-insensitively)."""
    lowered = {where: text.lower() for where, text in texts.items()}
    return [(w, n) for n in needles for w, t in lowered.items() if n.lower() in t]


def sqlite_raw(db: Path) -> dict[str, str]:
    """The database file and its WAL as bytes: whatever was ever written there."""
    out = {}
    for path in (db, Path(f"{db}-wal")):
        if path.exists():
            out[str(path)] = path.read_bytes().decode("latin-1")
    return out


# --------------------------------------------------------------------------- apps


def starlette_app(leza: Leza) -> Any:
    log = logging.getLogger("privacy.app")

    async def items(request: Request) -> PlainTextResponse:
        # An app that logs its URL and headers: the log scrubber's job.
        log.info("callback url %s", request.url)
        log.info("request headers %s", dict(request.headers))
        log.info("called with %s", json.dumps({"password": PLANTED["query_password"]}))
        leza.audit.record(
            action="update",
            entity_type="account",
            entity_id="acct-1",
            before={"password": PLANTED["audit_password"], "plan": "free"},
            after={"password": "changed", "api_key": PLANTED["audit_api_key"], "plan": "pro"},
        )
        return PlainTextResponse("ok")

    async def login(request: Request) -> PlainTextResponse:
        await request.body()  # the form (with its password) is read by the app, not by Leza
        leza.sessions.login()
        return PlainTextResponse("welcome")

    async def boom(request: Request) -> PlainTextResponse:
        raise ValueError(f"bad token {PLANTED['exception']}")

    return LezaMiddleware(
        Starlette(
            routes=[
                Route("/items", items),
                Route("/login", login, methods=["POST"]),
                Route("/boom", boom),
            ]
        ),
        leza=leza,
    )


async def drive_starlette(app: Any) -> None:
    transport = httpx.ASGITransport(app=app, client=(PROXY, 5555), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.post(
            "/login",
            content=f"username=alice&password={PLANTED['form_password']}",
            headers={**SECRET_HEADERS, "content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200
        r = await client.get(f"/items?{SECRET_QUERY}", headers=SECRET_HEADERS)
        assert r.status_code == 200
        r = await client.get(f"/boom?{SECRET_QUERY}", headers=SECRET_HEADERS)
        assert r.status_code == 500


def flask_app(leza: Leza) -> Any:
    from flask import Flask
    from flask import request as flask_request

    app = Flask(__name__)
    log = logging.getLogger("privacy.app")

    @app.get("/items")
    def items() -> str:
        log.info("callback url %s", flask_request.url)
        log.info("request headers %s", dict(flask_request.headers))
        return "ok"

    @app.post("/login")
    def login() -> str:
        assert flask_request.form["password"] == PLANTED["form_password"]
        return "welcome"

    app.wsgi_app = LezaWSGIMiddleware(app.wsgi_app, leza=leza)  # type: ignore[method-assign]
    return app


def drive_flask(app: Any) -> None:
    client = app.test_client()
    environ = {"REMOTE_ADDR": PROXY}
    r = client.post(
        "/login",
        data={"username": "alice", "password": PLANTED["form_password"]},
        headers=SECRET_HEADERS,
        environ_base=environ,
    )
    assert r.status_code == 200
    r = client.get(f"/items?{SECRET_QUERY}", headers=SECRET_HEADERS, environ_base=environ)
    assert r.status_code == 200


def django_ready() -> None:
    """The test Django project (tests/djangoproject), configured once per process."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)


def drive_django(conf: dict[str, Any]) -> Leza:
    from django.test import Client, override_settings

    from leza_middleware.django import get_leza

    django_ready()
    with override_settings(LEZA=conf):
        leza = get_leza()
        client = Client(REMOTE_ADDR=PROXY)
        r = client.get(f"/items/42/?{SECRET_QUERY}", headers=SECRET_HEADERS)
        assert r.status_code == 200
    return leza


# --------------------------------------------------------------------------- planted secrets


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["sqlite", "jsonl"])
async def test_planted_secrets_are_never_stored(
    backend: str, tmp_path: Path, city_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "leza.db"
    storage = f"sqlite:///{db}" if backend == "sqlite" else f"jsonl://{tmp_path / 'jsonl'}"
    spill = tmp_path / "spill"
    common: dict[str, Any] = {
        "geoip_db": str(city_db),
        "secret_key": SECRET_KEY,
        "flush_interval": 0.05,
        "trusted_proxies": [PROXY],
        "performer": performer_hook,
        "record_headers": RECORDED,
    }
    leza = Leza(storage=storage, spill_dir=str(spill), **common)
    handler = leza.logging_handler()
    app_log = logging.getLogger("privacy.app")
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    monkeypatch.setattr(app_log, "propagate", False)
    try:
        await drive_starlette(starlette_app(leza))
        drive_flask(flask_app(leza))
        assert leza.flush(5)
        access = leza.query.access(limit=100)
        # What the allow-list keeps, as the client sent it (Referer's secret filtered).
        recorded = [e["headers"] for e in access if e["endpoint"].startswith("/items")]
        assert recorded
        assert all(h["accept-language"] == "en-GB" for h in recorded)
        assert all(h["x-tenant"] == "acme" for h in recorded)
        assert all("token=[Filtered]&lang=en" in h["referer"] for h in recorded)
        assert all(set(h) <= set(RECORDED) for h in recorded)
        assert all(e["performer"]["email"] == ALICE["email"] for e in access)
        assert len(leza.query.logs(limit=100)) >= 4
        assert leza.audit.verify()
        assert leza.sessions.active()
        # After shutdown, a request's record goes to the spill file: prepared
        # (filtered) the same way.
        leza.shutdown(5)
        await drive_starlette(starlette_app(leza))
        assert any(spill.rglob("*.jsonl")), "nothing was spilled"
    finally:
        app_log.removeHandler(handler)
        leza.shutdown(5)
        leza.recorder.spill.rotate()  # the file late records went to stays open otherwise

    # Django, in its own database file, with the same settings.
    django_db = tmp_path / "django-leza.db"
    conf = {**common, "storage": f"sqlite:///{django_db}", "spill_dir": str(tmp_path / "dj-spill")}
    dj = await anyio.to_thread.run_sync(drive_django, conf)  # Django's ORM is sync-only
    try:
        assert dj.flush(5)
        [event] = dj.query.access()
        assert event["headers"]["x-tenant"] == "acme"
        assert event["endpoint"].endswith("access_token=[Filtered]&password=[Filtered]&page=2")
        tables = {f"django:{k}": v for k, v in sql_texts(dj.storage).items()}
    finally:
        dj.shutdown(5)
    texts = {f"django-raw:{k}": v for k, v in sqlite_raw(django_db).items()}
    texts |= tables | files_text(spill)
    if backend == "sqlite":
        sql = SQLStorage(f"sqlite:///{db}")
        try:
            tables |= sql_texts(sql)
        finally:
            sql.close()
        texts |= tables | sqlite_raw(db)  # the raw file: bytes ever written, not just rows
    else:
        texts |= files_text(tmp_path / "jsonl")
    assert hits(texts, PLANTED.values()) == []
    # The email is allowed in identity fields only: the performer, the audit actor.
    # (JSON Lines and the spill file embed the performer in every event.)
    where = {w for w, _ in hits(tables, [ALICE["email"]])}
    assert "django:leza_performer" in where
    assert where <= {"leza_performer", "leza_audit", "django:leza_performer"}
    if backend == "sqlite":
        assert "leza_performer" in where


def test_log_scrubber_filters_what_apps_commonly_log() -> None:
    cases = {
        "GET /cb?code=abc123&state=x&access_token=T0KEN": "code=[Filtered]&state=x&"
        "access_token=[Filtered]",
        "{'Authorization': 'Bearer abc.def.ghi', 'Accept': 'text/html'}": "'Authorization': "
        "'[Filtered]', 'Accept': 'text/html'",
        '{"api_key": "k-123", "user": "al"}': '"api_key": "[Filtered]", "user": "al"',
        "Cookie: sessionid=s3cr3t": "Cookie: [Filtered]",
        "sent Authorization: Bearer eyJhbGciOi": "Authorization: [Filtered]",
        "retry with bearer abcdef123456": "bearer [Filtered]",
        "header Basic dXNlcjpwYXNzd29yZA==": "Basic [Filtered]",
    }
    for text, expected in cases.items():
        assert expected in REDACT.scrub_text(text), text
    for prose in ("Basic information about keyword=value", "user=alice page=2", "monkey=1"):
        assert REDACT.scrub_text(prose) == prose


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "name",
    [
        "Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "X-Api-Key",
        "x-auth-token", "X-CSRF-Token", "x-xsrf-token", "X-Session-Id", "x-my-token",
        "X-Client-Secret", "x-password", "x-auth-user", "x_api_key", "x-jwt",
    ],
)  # fmt: skip
def test_credential_headers_are_refused_at_configuration(name: str) -> None:
    with pytest.raises(LezaConfigError, match="never stored"):
        Settings.resolve({"record_headers": ["accept-language", name]})


def test_record_headers_validation_and_environment(tmp_path: Path) -> None:
    env = {"LEZA_RECORD_HEADERS": "Accept-Language, X-Tenant,accept-language"}
    assert Settings.resolve({}, env).record_headers == ("accept-language", "x-tenant")
    with pytest.raises(LezaConfigError, match=r"record_headers \(from \$LEZA_RECORD_HEADERS\)"):
        Settings.resolve({}, {"LEZA_RECORD_HEADERS": "x-tenant,cookie"})
    with pytest.raises(LezaConfigError, match="not a header name"):
        Settings.resolve({"record_headers": ["bad header"]})
    with pytest.raises(LezaConfigError, match="at most 16"):
        Settings.resolve({"record_headers": [f"x-h{i}" for i in range(17)]})
    assert Settings.resolve({}).record_headers == ()


@pytest.mark.anyio
async def test_headers_only_when_configured_and_capped(make_leza: Any) -> None:
    plain = make_leza()
    app = LezaMiddleware(Starlette(routes=[Route("/", lambda r: PlainTextResponse("hi"))]), plain)
    transport = httpx.ASGITransport(app=app, client=(PROXY, 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/", headers={"x-tenant": "acme"})
    assert plain.flush(5)
    [event] = plain.query.access()
    assert "headers" not in event  # nothing configured: no key, a NULL column
    plain.shutdown(5)

    leza = make_leza(record_headers=["x-tenant", "x-trace"], storage="memory://")
    app = LezaMiddleware(Starlette(routes=[Route("/", lambda r: PlainTextResponse("hi"))]), leza)
    transport = httpx.ASGITransport(app=app, client=(PROXY, 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        # A repeated name is one comma-joined value; control characters go; 512 max.
        await client.get(
            "/",
            headers=[("x-tenant", "a\r\nb"), ("x-tenant", "c"), ("x-trace", "z" * 5000)],
        )
        await client.get("/", headers={"user-agent": "curl/8"})  # none of them
    assert leza.flush(5)
    second, first = leza.query.access()
    assert first["headers"]["x-tenant"] == "ab, c"
    assert first["headers"]["x-trace"] == "z" * 512
    assert "headers" not in second


# --------------------------------------------------------------------------- IP anonymisation


def test_anonymizer_modes() -> None:
    key = b"k" * 32
    trunc = IpAnonymizer("truncate", key)
    assert trunc("81.2.69.142") == "81.2.69.0"
    assert trunc("2001:480:10:ab::1") == "2001:480:10::"
    assert trunc("fe80::1%eth0") == "fe80::"
    assert trunc("::ffff:81.2.69.142") == "81.2.69.0"
    assert trunc("81.2.69.0") == "81.2.69.0"  # idempotent
    assert trunc("unknown") == "unknown"  # nothing to truncate, nothing identifying
    invalid = trunc("161.35.614.165")  # cannot be truncated: hashed instead
    assert re.fullmatch(r"h:[0-9a-f]{16}", invalid)
    assert trunc("") == ""
    hashed = IpAnonymizer("hash", key)
    h = hashed("81.2.69.142")
    assert re.fullmatch(r"h:[0-9a-f]{16}", h)
    assert hashed("81.2.69.142") == h == IpAnonymizer("hash", key)("81.2.69.142")
    assert hashed("2001:0480:0010::1") == hashed("2001:480:10::1")  # one spelling per IP
    assert hashed("81.2.69.143") != h
    assert IpAnonymizer("hash", b"x" * 32)("81.2.69.142") != h  # keyed
    assert hashed(h) == h  # a kind's mode on top of another's
    assert trunc(h) == h
    with pytest.raises(ValueError, match="not an anonymisation mode"):
        IpAnonymizer("none", key)


def test_anonymize_ip_settings() -> None:
    def modes(value: Any, env: dict[str, str] | None = None) -> dict[str, str]:
        return dict(Settings.resolve({"anonymize_ip": value} if value else {}, env).anonymize_ip)

    assert modes(None) == {}
    assert modes("none") == {}
    assert modes("truncate") == dict.fromkeys(
        ("access", "session", "audit", "advisory", "log"), "truncate"
    )
    assert modes({"access": "hash", "audit": "none"}) == {"access": "hash"}
    assert modes(None, {"LEZA_ANONYMIZE_IP": "access=truncate, session=hash"}) == {
        "access": "truncate",
        "session": "hash",
    }
    with pytest.raises(LezaConfigError, match="must be one of none, truncate, hash"):
        modes("scramble")
    with pytest.raises(LezaConfigError, match="unknown kind 'acces'"):
        modes({"acces": "hash"})
    with pytest.raises(LezaConfigError, match=r"from \$LEZA_ANONYMIZE_IP"):
        modes(None, {"LEZA_ANONYMIZE_IP": "access"})


async def _signed_in_request(app: Any, *, xff: str = LONDON_IP, path: str = "/") -> None:
    transport = httpx.ASGITransport(app=app, client=(PROXY, 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.get(path, headers={"x-forwarded-for": xff, "x-demo-user": "alice"})
        assert r.status_code == 200


def audited_app(leza: Leza) -> Any:
    async def home(request: Request) -> PlainTextResponse:
        leza.audit.record(action="update", entity_type="doc", entity_id="d1", after={"v": 1})
        return PlainTextResponse("hi")

    return LezaMiddleware(Starlette(routes=[Route("/", home)]), leza=leza)


@pytest.mark.anyio
async def test_truncate_keeps_geo_and_stores_no_full_address(
    make_leza: Any, storage_url: str
) -> None:
    leza = make_leza(
        anonymize_ip="truncate",
        trusted_proxies=[PROXY, "10.0.0.0/8"],
        performer=performer_hook,
    )
    await _signed_in_request(audited_app(leza), xff=f"{LONDON_IP}, 10.1.2.3")
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["ip"] == "81.2.69.0"
    assert event["ip_valid"] is True
    assert event["peer_ip"] == "203.0.113.0"
    assert event["proxy_chain"] == ["10.1.2.0"]
    geo = event["geoLocationInfoOfIp"]
    assert geo["city"] == "London"  # looked up before the address was truncated
    assert geo["country_code"] == "GB"
    assert geo["ip"] == "81.2.69.0"
    assert geo["network"].startswith("g:")  # not the /26 the database answered
    [session] = leza.sessions.active()
    assert session["ip"] == "81.2.69.0"
    assert session["geoLocationInfoOfIp"]["city"] == "London"
    [audit] = leza.query.audit()
    assert audit["ip"] == "81.2.69.0"
    assert leza.audit.verify()
    texts = sql_texts(leza.storage)
    assert hits(texts, [LONDON_IP, PROXY, "10.1.2.3", "81.2.69.128/26"]) == []


@pytest.mark.anyio
async def test_modes_per_kind(make_leza: Any) -> None:
    leza = make_leza(
        anonymize_ip={"access": "truncate", "session": "hash", "audit": "none"},
        trusted_proxies=[PROXY],
        performer=performer_hook,
    )
    await _signed_in_request(audited_app(leza))
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["ip"] == "81.2.69.0"
    [session] = leza.sessions.active()
    # A session starts from its access event's stored IP, then its own mode.
    key = leza.keyring.subkey(b"anonymize-ip")
    assert session["ip"] == IpAnonymizer("hash", key)("81.2.69.0")
    [audit] = leza.query.audit()
    assert audit["ip"] == LONDON_IP  # audit: "none", read from the request itself


@pytest.mark.anyio
async def test_a_session_mode_alone(make_leza: Any) -> None:
    leza = make_leza(
        anonymize_ip={"session": "truncate"}, trusted_proxies=[PROXY], performer=performer_hook
    )
    await _signed_in_request(audited_app(leza))
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["ip"] == LONDON_IP
    assert event["geoLocationInfoOfIp"]["network"] == "81.2.69.128/26"
    [session] = leza.sessions.active()
    assert session["ip"] == "81.2.69.0"
    assert session["geoLocationInfoOfIp"]["city"] == "London"
    assert session["geoLocationInfoOfIp"]["network"].startswith("g:")


@pytest.mark.anyio
async def test_hash_mode_is_stable_and_the_chain_still_verifies(
    make_leza: Any, tmp_path: Path
) -> None:
    leza = make_leza(anonymize_ip="hash", trusted_proxies=[PROXY], performer=performer_hook)
    app = audited_app(leza)
    await _signed_in_request(app)
    await _signed_in_request(app)
    await _signed_in_request(app, xff="89.160.20.112")
    assert leza.flush(5)
    events = leza.query.access()
    ips = [e["ip"] for e in events]
    assert all(re.fullmatch(r"h:[0-9a-f]{16}", ip) for ip in ips)
    assert ips[1] == ips[2] != ips[0]
    assert {e["geoLocationInfoOfIp"]["city"] for e in events} == {"London", "Linköping"}
    audits = leza.query.audit()
    assert {a["ip"] for a in audits} == set(ips)  # the same pseudonym in every kind
    assert leza.audit.verify()
    # Another worker with the same key stores the same pseudonym.
    other = make_leza(
        anonymize_ip="hash", storage="memory://", trusted_proxies=[PROXY], geoip_db=False
    )
    await _signed_in_request(LezaMiddleware(audited_app(other).app, other))
    assert other.flush(5)
    assert other.query.access()[0]["ip"] == ips[2]


def test_advisories_get_their_mode_in_message_and_details(make_leza: Any) -> None:
    leza = make_leza(anonymize_ip={"advisory": "hash"}, storage="memory://")
    advisory = AdvisoryEvent(
        id="a1", ts=1, rule="burst", severity="high",
        message=f"10 denials from {LONDON_IP}", ip=LONDON_IP,
        details={"ip": LONDON_IP, "seen": [LONDON_IP, "x"]},
    )  # fmt: skip
    leza.privacy.derived([advisory])
    assert advisory.ip.startswith("h:")
    assert advisory.message == f"10 denials from {advisory.ip}"
    assert advisory.details == {"ip": advisory.ip, "seen": [advisory.ip, "x"]}


# --------------------------------------------------------------------------- retention


def old_access(ts: int, i: int, performer: Performer | None = None) -> AccessEvent:
    return AccessEvent.build(
        id=new_event_id(ts), ts=ts, action="access", method="GET", endpoint=f"/r/{i}",
        route=None, status=200, duration_us=5, outcome="success", reason="ok",
        request_id=f"rid-{i}", client_ip="127.0.0.1", ip_valid=True, peer_ip="127.0.0.1",
        performer=performer,
    )  # fmt: skip


def test_retention_settings() -> None:
    got = Settings.resolve({}, {"LEZA_RETENTION": "access=90d,log=30d"}).retention
    assert got == (("access", 90 * 86400), ("log", 30 * 86400))
    assert Settings.resolve({"retention": {"session": 3600, "audit": "2w"}}).retention == (
        ("audit", 14 * 86400),
        ("session", 3600),
    )
    assert Settings.resolve({"retention_interval": "15m"}).retention_interval == 900
    with pytest.raises(LezaConfigError, match="invalid duration 'ninety days'"):
        Settings.resolve({"retention": {"access": "ninety days"}})
    with pytest.raises(LezaConfigError, match="unknown kind 'bogus'"):
        Settings.resolve({"retention": {"bogus": "1d"}})
    with pytest.raises(LezaConfigError, match="must be more than 0"):
        Settings.resolve({"retention_interval": 0})
    with pytest.raises(LezaConfigError, match="must map event kinds"):
        Settings.resolve({"retention": 90})


@pytest.mark.both_databases
def test_retention_purges_old_rows_on_the_recorder_tick(make_leza: Any) -> None:
    now = time.time_ns() // 1000
    old, recent = now - 100 * DAY_US, now - 1 * DAY_US
    writer = make_leza(advisories=False, sessions=False)
    storage = writer.storage
    storage.setup()
    storage.write(
        [old_access(old + i, i) for i in range(2500)]  # several purge batches
        + [old_access(recent, 9999)]
        + [
            LogEvent(id=new_event_id(old), ts=old, level=20, logger="a", message="old"),
            LogEvent(id=new_event_id(recent), ts=recent, level=20, logger="a", message="new"),
            SessionEvent(id=new_event_id(old), ts=old, action="session_start", session_id="s-old"),
            SessionEvent(
                id=new_event_id(old + 1),
                ts=old + 1,
                action="session_end",
                session_id="s-old",
                end_reason="logout",
            ),
            # Started long ago and never ended: active sessions are never purged.
            SessionEvent(id=new_event_id(old), ts=old, action="session_start", session_id="s-on"),
        ]
    )
    for ts in (old, old + 1, recent):
        writer.record(
            AuditEvent(id=new_event_id(ts), ts=ts, action="update", entity_type="doc",
                       entity_id="d", after={"n": ts}, app=writer.settings.app_name)
        )  # fmt: skip
    assert writer.flush(5)
    writer.shutdown(5)

    leza = make_leza(
        retention={
            "access": "30d",
            "log": "30d",
            "session": "30d",
            "audit": "30d",
            "traffic": "30d",
        },
        retention_interval=0.05,
        sessions=False,
    )
    leza.record(LogEvent(id=new_event_id(now), ts=now, level=20, logger="a", message="go"))

    def purged() -> bool:  # every kind's purge has finished
        return all(leza.privacy.purged.values()) and not leza.privacy.purging

    assert wait_for(lambda: purged() and len(leza.query.access(limit=10)) == 1, timeout=30)
    assert wait_for(lambda: {s["_id"] for s in leza.sessions.find(limit=10)} == {"s-on"})
    assert [e["request_id"] for e in leza.query.access()] == ["rid-9999"]
    assert [e["message"] for e in leza.query.logs()] == ["go", "new"]
    assert len(leza.query.audit()) == 1
    traffic = leza.privacy.purged.pop("traffic")
    assert leza.privacy.purged == {"access": 2500, "audit": 2, "log": 1, "session": 1}
    # The old events' rollups (their minute and hour rows), not the recent one's.
    assert traffic >= 2
    assert leza.storage.traffic(old - DAY_US, old + DAY_US, 3600).totals.requests == 0
    assert leza.storage.traffic(recent - DAY_US, now, 3600).totals.requests == 1
    assert leza.audit.verify()  # purged behind a signed marker


def test_retention_run_now_and_audit_without_key(make_leza: Any, tmp_path: Path) -> None:
    leza = make_leza(
        storage="memory://", retention={"access": "1d", "audit": "1d"}, secret_key=None
    )
    old = time.time_ns() // 1000 - 3 * DAY_US
    leza.storage.write([old_access(old, 1)])
    with pytest.raises(LezaError, match="secret key"):
        leza.privacy.run_retention()  # audit purge markers are signed: refused, not guessed
    assert leza.query.access() == []


# --------------------------------------------------------------------------- erasure


def erasure_app(leza: Leza) -> Any:
    async def home(request: Request) -> PlainTextResponse:
        logging.getLogger("privacy.app").info("hello from %s", request.url.path)
        return PlainTextResponse("hi")

    async def profile(request: Request) -> PlainTextResponse:
        who = performer_hook(request)
        assert who is not None
        leza.audit.record(
            action="update", entity_type="user", entity_id=who["id"],
            before={"email": "old-" + who["email"]}, after={"email": who["email"]},
        )  # fmt: skip
        return PlainTextResponse("ok")

    async def grant(request: Request) -> PlainTextResponse:
        # Bob (an admin) changes Alice's role: a row about her, by him.
        leza.audit.record(
            action="update", entity_type="role", entity_id="editors",
            after={"members": [ALICE["email"], "carol@example.com"]},
            reason=f"requested by {ALICE['name']}",
        )  # fmt: skip
        return PlainTextResponse("ok")

    async def failed(request: Request) -> PlainTextResponse:
        leza.sessions.login_failed(username=ALICE["email"])
        return PlainTextResponse("no", status_code=401)

    return LezaMiddleware(
        Starlette(
            routes=[
                Route("/", home),
                Route("/profile", profile),
                Route("/users/{uid}", home),
                Route("/grant", grant),
                Route("/failed", failed),
            ]
        ),
        leza=leza,
    )


async def erasure_traffic(leza: Leza) -> dict[str, httpx.Cookies]:
    handler = leza.logging_handler()
    app_log = logging.getLogger("privacy.app")
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    app = erasure_app(leza)
    jars: dict[str, httpx.Cookies] = {}
    try:
        for who in ("alice", "bob"):
            transport = httpx.ASGITransport(app=app, client=(PROXY, 5555))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver", headers={"x-demo-user": who}
            ) as client:
                for path in ("/", "/profile", "/"):
                    assert (await client.get(path)).status_code == 200
                if who == "bob":
                    await client.get(f"/users/{ALICE['id']}")
                    await client.get("/grant")
                jars[who] = client.cookies
        transport = httpx.ASGITransport(app=app, client=(PROXY, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as anon:
            assert (await anon.get("/failed")).status_code == 401
        assert leza.flush(5)
    finally:
        app_log.removeHandler(handler)
    return jars


def bob_rows(leza: Leza) -> dict[str, Any]:
    return {
        "access": leza.query.access(performer_id=BOB["id"], limit=100),
        "audit": leza.query.audit(performer_id=BOB["id"], limit=100),
        "sessions": leza.sessions.find(performer_id=BOB["id"]),
    }


ALICE_STRINGS = [ALICE["id"], ALICE["email"], ALICE["name"]]


@pytest.mark.anyio
@pytest.mark.both_databases
async def test_forget_erases_one_person_and_the_chain_still_verifies(make_leza: Any) -> None:
    leza = make_leza(performer=performer_hook, trusted_proxies=[PROXY])
    jars = await erasure_traffic(leza)
    leza.storage.write(
        [
            AdvisoryEvent(
                id=new_event_id(1),
                ts=1,
                rule="new_machine",
                severity="low",
                message=f"{ALICE['name']} signed in from a new machine",
                performer_id=ALICE["id"],
                details={"email": ALICE["email"]},
            ),
            AdvisoryEvent(
                id=new_event_id(2),
                ts=2,
                rule="burst",
                severity="high",
                message=f"burst of failed logins for {ALICE['email']}",
                details={"username": ALICE["email"]},
            ),
        ]
    )
    before = sql_texts(leza.storage)
    assert {w for w, _ in hits(before, ALICE_STRINGS)} >= {
        "leza_access", "leza_performer", "leza_audit", "leza_session", "leza_log",
        "leza_advisory",
    }  # fmt: skip
    bob_before = bob_rows(leza)
    assert leza.audit.verify()

    report = leza.forget(ALICE["id"])

    assert report.access == 3  # her three requests
    assert report.revoked == 1
    assert report.sessions == 1
    assert report.performers == 1
    assert report.logs >= 2
    assert report.advisories == 1
    assert report.scrubbed >= 3  # Bob's /users/<id>, the failed login, the burst advisory
    assert report.audit_redacted == 2  # her profile change, Bob's grant naming her
    assert report.audit_unverified == 0
    after = sql_texts(leza.storage)
    assert hits(after, ALICE_STRINGS) == []
    result = leza.audit.verify()
    assert result, result.reason
    assert "2 rows redacted by erasure" in result.reason
    # Bob's rows are untouched, except his own event naming her, scrubbed.
    bob_after = bob_rows(leza)
    assert bob_after["sessions"] == bob_before["sessions"]
    changed = [
        (b, a) for b, a in zip(bob_before["access"], bob_after["access"], strict=True) if a != b
    ]
    assert [a["endpoint"] for _, a in changed] == ["/users/[Forgotten]"]
    grant = next(a for a in bob_after["audit"] if a["entity_type"] == "role")
    assert grant["reason"] == "requested by [Forgotten]"
    assert grant["after"] == {"members": ["[Forgotten]", "carol@example.com"]}
    assert grant["actor"]["id"] == BOB["id"]  # still his
    profile = leza.query.audit(entity_type="user", entity_id="[Forgotten]")
    assert len(profile) == 1
    assert profile[0]["actor"]["name"] == "[Forgotten]"
    assert profile[0]["ip"] is None
    # Her session was revoked: the browser that still holds it is refused.
    transport = httpx.ASGITransport(app=erasure_app(leza), client=(PROXY, 5555))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", cookies=jars["alice"]
    ) as client:
        assert (await client.get("/")).status_code == 401
    # A second erasure finds nothing left.
    again = leza.forget(ALICE["id"])
    assert again.access == again.audit_redacted == again.performers == 0

    # Tampering with a redacted row is still found ...
    storage = leza.storage
    assert isinstance(storage, SQLStorage)
    entry = storage.audit_redactions()[0]
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE leza_audit SET reason = 'edited later' WHERE id = %s"
            if storage.url.get_backend_name() == "postgresql"
            else "UPDATE leza_audit SET reason = 'edited later' WHERE id = ?",
            (entry["id"],),
        )
    broken = leza.audit.verify()
    assert not broken
    assert broken.problem == "edited"


def _put_back(storage: SQLStorage, table: str, column: str, value: Any, row_id: str) -> None:
    mark = "%s" if storage.url.get_backend_name() == "postgresql" else "?"
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE {table} SET {column} = {mark} WHERE id = {mark}", (value, row_id)
        )


@pytest.mark.anyio
async def test_forged_or_removed_redaction_entries_break_verification(make_leza: Any) -> None:
    leza = make_leza(performer=performer_hook, trusted_proxies=[PROXY])
    await erasure_traffic(leza)
    leza.forget(ALICE["id"])
    assert leza.audit.verify()
    storage = leza.storage
    assert isinstance(storage, SQLStorage)
    entry = storage.audit_redactions()[0]
    _put_back(storage, "leza_audit_redaction", "redacted_at", entry["redacted_at"] + 1, entry["id"])
    result = leza.audit.verify()
    assert not result
    assert "redaction entry is not signed" in result.reason
    _put_back(storage, "leza_audit_redaction", "redacted_at", entry["redacted_at"], entry["id"])
    assert leza.audit.verify()
    with storage.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM leza_audit_redaction")
    gone = leza.audit.verify()
    assert not gone
    assert gone.problem == "edited"


@pytest.mark.parametrize("backend", ["memory", "jsonl"])
def test_forget_on_memory_and_json_lines(backend: str, make_leza: Any, tmp_path: Path) -> None:
    directory = tmp_path / "jsonl"
    leza = make_leza(storage="memory://" if backend == "memory" else f"jsonl://{directory}")
    alice = Performer(**ALICE)
    bob = Performer(**BOB)
    now = time.time_ns() // 1000
    leza.storage.write(
        [
            old_access(now, 1, alice),
            old_access(now + 1, 2, bob),
            AccessEvent.build(
                id=new_event_id(now + 2), ts=now + 2, action="access", method="GET",
                endpoint=f"/users/{ALICE['id']}", route=None, status=200, duration_us=1,
                outcome="success", reason="ok", request_id="rid-bob", client_ip="1.2.3.4",
                ip_valid=True, peer_ip="1.2.3.4", performer=bob,
            ),
            LogEvent(id=new_event_id(now), ts=now, level=20, logger="a",
                     message="in her request", request_id="rid-1"),
            LogEvent(id=new_event_id(now), ts=now, level=20, logger="a",
                     message=f"mail to {ALICE['email']}", request_id="rid-2"),
            AdvisoryEvent(id=new_event_id(now), ts=now, rule="r", severity="low",
                          message="m", performer_id=ALICE["id"]),
            SessionEvent(id=new_event_id(now), ts=now, action="session_start",
                         session_id="s-alice", performer=alice, ip="81.2.69.142"),
        ]
    )  # fmt: skip
    leza.audit.record(action="update", entity_type="user", entity_id=ALICE["id"], actor=alice,
                      after={"email": ALICE["email"]})  # fmt: skip
    leza.audit.record(action="update", entity_type="doc", entity_id="d", actor=bob, after={"v": 1})
    assert leza.flush(5)
    report = leza.forget(ALICE["id"])
    assert (report.access, report.logs, report.advisories) == (1, 1, 1)
    assert report.audit_redacted == 1
    assert report.scrubbed == 2
    assert leza.audit.verify()
    if backend == "jsonl":
        texts = files_text(directory)
    else:
        storage = leza.storage
        assert isinstance(storage, MemoryStorage)
        texts = {"memory": json.dumps([e.to_dict() for e in storage.events()])}
        texts["sessions"] = json.dumps(leza.sessions.find(limit=10))
    assert hits(texts, [*ALICE_STRINGS, LONDON_IP]) == []
    assert "/users/[Forgotten]" in {e["endpoint"] for e in leza.query.access()}
    assert {e["performer"]["id"] for e in leza.query.access()} == {BOB["id"]}


def test_forget_needs_the_key_for_audit_rows_and_changes_nothing_without(
    make_leza: Any,
) -> None:
    leza = make_leza(storage="memory://", secret_key=None)
    alice = Performer(**ALICE)
    leza.storage.write([old_access(time.time_ns() // 1000, 1, alice)])
    leza.audit.record(action="login", entity_type="user", entity_id="x", actor=alice)
    assert leza.flush(5)
    with pytest.raises(LezaError, match="secret key"):
        leza.forget(ALICE["id"])
    assert len(leza.query.access()) == 1  # nothing deleted before the refusal
    with pytest.raises(ValueError, match="needs a performer id"):
        leza.forget("  ")


def test_forget_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_leza: Any) -> None:
    db = tmp_path / "cli.db"
    leza = make_leza(storage=f"sqlite:///{db}")
    alice = Performer(**ALICE)
    leza.storage.write([old_access(time.time_ns() // 1000, 1, alice)])
    leza.audit.record(action="update", entity_type="user", entity_id="u", actor=alice)
    assert leza.flush(5)
    leza.shutdown(5)
    monkeypatch.setenv("LEZA_SECRET_KEY", SECRET_KEY)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    storage = ["--storage", f"sqlite:///{db}"]
    # Nobody to confirm: refused, nothing erased.
    assert main(["forget", "--performer", ALICE["id"], *storage]) == 2
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert main(["forget", "--performer", ALICE["id"], "--yes", *storage]) == 0
    assert "1 access events" in out.getvalue()
    assert "1 audit rows redacted" in out.getvalue()
    assert main(["verify", *storage]) == 0
    with sqlite3.connect(db) as con:
        dump = "\n".join(con.iterdump())
    assert not [s for s in ALICE_STRINGS if s.lower() in dump.lower()]
    assert "forget" in COMMANDS


def test_django_forget_command(tmp_path: Path) -> None:
    from django.core.management import call_command
    from django.test import override_settings

    from leza_middleware.django import get_leza

    django_ready()
    conf = {"storage": f"sqlite:///{tmp_path / 'dj.db'}", "spill_dir": str(tmp_path / "sp")}
    with override_settings(LEZA=conf):
        leza = get_leza()
        try:
            alice = Performer(**ALICE)
            leza.storage.write([old_access(time.time_ns() // 1000, 1, alice)])
            leza.audit.record(action="update", entity_type="user", entity_id="u", actor=alice)
            assert leza.flush(5)
            out = io.StringIO()
            call_command("leza_forget", "--performer", ALICE["id"], "--yes", stdout=out)
            assert "1 access events" in out.getvalue()
            assert leza.audit.verify()
            assert hits(sql_texts(leza.storage), ALICE_STRINGS) == []
        finally:
            leza.shutdown(5)
