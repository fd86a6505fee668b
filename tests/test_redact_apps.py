"""Secrets filtered by meaning, through real apps into real storage.

The forms an outside probe found stored in clear (bracketed and nested query
keys, URL-valued parameters encoded once or twice, ``password: …`` in a log
line), and every other place a URL or text is stored: recorded headers, audit
states (nested, with the chain still verifying), audit reasons, log messages
and exceptions, advisory messages and details, availability check errors.
Each planted value is distinct; after the run every table (and the raw SQLite
files) is searched for all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import wait_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from test_privacy import hits, sql_texts, sqlite_raw

from leza_middleware import Leza, LezaMiddleware, LezaWSGIMiddleware
from leza_middleware.advisories import Finding, Rule, default_rules
from leza_middleware.events import Event

F = "[Filtered]"
S = {n: f"PLANT{n:02d}x7q" for n in range(1, 30)}  # every planted secret, distinct


def once(text: str) -> str:
    return quote(text, safe="")


QUERY = "&".join(
    [
        f"user[password]={S[1]}",
        f"password[]={S[2]}",
        f"a[0][token]={S[3]}",
        f"next=/cb?token={S[4]}",
        f"redirect={once(f'https://a.example/cb?code={S[5]}&state=1')}",
        f"r2={once(once(f'https://a.example/cb?code={S[6]}&lang=en'))}",
        f"u=https://user:{S[7]}@h.example/x",
        f"Pass%77ord={S[8]}",
        "page=2",
    ]
)
STORED_QUERY = "&".join(
    [
        f"user[password]={F}",
        f"password[]={F}",
        f"a[0][token]={F}",
        f"next=/cb?token={F}",
        f"redirect={once('https://a.example/cb?code=')}{F}{once('&state=1')}",
        f"r2={once(once('https://a.example/cb?code='))}{F}{once(once('&lang=en'))}",
        f"u=https://user:{F}@h.example/x",
        f"Pass%77ord={F}",
        "page=2",
    ]
)
REFERER = f"https://app.example/login?next={once(f'/cb?sid={S[9]}')}&lang=en"
app_log = logging.getLogger("tests.redact.app")


class Quoting(Rule):
    """A custom rule whose finding quotes what it saw: a message and details
    holding secrets, as a careless rule would write them."""

    name = "quoting"
    severity = "low"
    kinds = frozenset({"access"})

    def observe(self, event: Event, ctx: Any) -> Iterable[Finding]:
        if not str(getattr(event, "endpoint", "")).startswith("/items"):
            return ()
        return (
            Finding(
                message=f"saw password={S[10]} at {event.id}",
                details={"api_key": S[11], "note": f"session: {S[12]}", "endpoint": "/items"},
            ),
        )


def starlette_app(leza: Leza) -> Any:
    async def items(request: Request) -> PlainTextResponse:
        app_log.info("password: %s Authorization: Bearer %s", S[13], S[14])
        app_log.info("called %s", request.url)  # the query's secrets, as the app sees them
        app_log.info("body %s", {"user": {"pin": S[15]}, "ok": True})
        try:
            raise ValueError(f"bad credentials={S[16]}")
        except ValueError:
            app_log.exception("login failed")
        leza.audit.record(
            action="update",
            entity_type="account",
            entity_id="acct-1",
            before={"profile": {"password": S[17], "plan": "free"}, "code": "FR"},
            after={
                "profile": {"password": S[18], "plan": "pro"},
                "code": "FR",
                "callback": f"https://a.example/cb?token={S[19]}&x=1",
                "keys": [{"private_key": S[20]}],
            },
            reason=f"reset requested with token={S[21]}",
        )
        return PlainTextResponse("ok")

    return LezaMiddleware(Starlette(routes=[Route("/items", items)]), leza=leza)


@pytest.fixture
def logged() -> Iterator[None]:
    app_log.setLevel(logging.INFO)
    app_log.propagate = False
    yield
    app_log.propagate = True
    for handler in list(app_log.handlers):
        app_log.removeHandler(handler)


@pytest.mark.both_databases
def test_every_stored_place_filters_secrets_by_meaning(
    make_leza: Any, storage_url: str, tmp_path: Path, logged: None
) -> None:
    leza = make_leza(
        record_headers=["referer", "origin", "x-tenant"],
        advisory_rules=[*default_rules(), Quoting()],
        advisory_notify="off",
    )
    app_log.addHandler(leza.logging_handler())

    def failing() -> None:
        raise RuntimeError(f"GET https://svc:{S[22]}@internal.example/health?token={S[23]} -> 503")

    leza.availability.check("svc", failing, interval=0.05, timeout=0.05)
    client = TestClient(starlette_app(leza))
    r = client.get(
        f"/items?{QUERY}",
        headers={"referer": REFERER, "origin": "https://app.example", "x-tenant": "acme"},
    )
    assert r.status_code == 200
    assert wait_for(lambda: bool(leza.flush(1) and leza.query.checks(check="svc")), 10)
    leza.availability.stop(timeout=2)
    assert leza.flush(5)

    [event] = leza.query.access()
    assert event["endpoint"] == f"/items?{STORED_QUERY}"
    assert event["headers"] == {
        "referer": f"https://app.example/login?next={once('/cb?sid=')}{F}&lang=en",
        "origin": "https://app.example",
        "x-tenant": "acme",
    }
    messages = [e["message"] for e in leza.query.logs()]
    assert f"password: {F} Authorization: {F}" in messages
    assert f"body {{'user': {{'pin': '{F}'}}, 'ok': True}}" in messages
    assert any(m.startswith("called http://testserver/items?user[password]=") for m in messages)
    [failed] = [e for e in leza.query.logs() if e["message"] == "login failed"]
    assert f"credentials={F}" in failed["exception"]
    [audit] = leza.query.audit()
    assert audit["before"] == {"profile": {"password": F, "plan": "free"}, "code": "FR"}
    assert audit["after"]["profile"] == {"password": F, "plan": "pro"}
    assert audit["after"]["callback"] == f"https://a.example/cb?token={F}&x=1"
    assert audit["after"]["keys"] == [{"private_key": F}]
    assert audit["diff"]["profile"] == {
        "before": {"password": F, "plan": "free"},
        "after": {"password": F, "plan": "pro"},
    }
    assert audit["reason"] == f"reset requested with token={F}"
    assert leza.audit.verify()  # filtered before the chain hash: the stored form verifies
    [advisory] = leza.query.advisories(action="quoting")
    assert advisory["message"].startswith(f"saw password={F} at ")
    assert advisory["details"] == {"api_key": F, "note": f"session: {F}", "endpoint": "/items"}
    error = leza.query.checks(check="svc")[0]["error"]
    assert f"svc:{F}@internal.example/health?token={F}" in error

    texts = sql_texts(leza.storage)
    if storage_url.startswith("sqlite"):
        leza.shutdown(5)
        texts |= sqlite_raw(Path(storage_url.removeprefix("sqlite:///")))
    assert hits(texts, S.values()) == []


def test_wsgi_flask_endpoint_and_headers(make_leza: Any) -> None:
    from flask import Flask

    leza = make_leza(record_headers=["referer"])
    app = Flask(__name__)

    @app.get("/items")
    def items() -> str:
        return "ok"

    app.wsgi_app = LezaWSGIMiddleware(app.wsgi_app, leza=leza)  # type: ignore[method-assign]
    r = app.test_client().get(f"/items?{QUERY}", headers={"referer": REFERER})
    assert r.status_code == 200
    r.close()  # the WSGI middleware records when the server closes the response
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["endpoint"] == f"/items?{STORED_QUERY}"
    assert event["headers"]["referer"].endswith(f"{once('/cb?sid=')}{F}&lang=en")
    assert hits(sql_texts(leza.storage), S.values()) == []


def test_names_a_deployment_adds_are_filtered_everywhere(make_leza: Any, logged: None) -> None:
    leza = make_leza(redact_query_keys=["national-id"], audit_mask=["salary"])
    app_log.addHandler(leza.logging_handler())
    client = TestClient(LezaMiddleware(Starlette(routes=[Route("/", _ok)]), leza=leza))
    assert client.get(f"/?filter[national_id]={S[24]}&salary={S[25]}&page=1").status_code == 200
    assert client.get(f"/cart;jsessionid={S[29]}").status_code == 404  # recorded all the same
    app_log.info("national_id: %s", S[26])
    leza.audit.record(
        action="update", entity_type="person", entity_id="p1",
        before={"salary": S[27]}, after={"salary": S[28], "name": "Al"},
    )  # fmt: skip
    assert leza.flush(5)
    missing, event = leza.query.access()  # newest first
    assert event["endpoint"] == f"/?filter[national_id]={F}&salary={F}&page=1"
    assert missing["endpoint"] == f"/cart;jsessionid={F}"
    assert leza.query.logs()[0]["message"] == f"national_id: {F}"
    assert leza.query.audit()[0]["after"] == {"salary": F, "name": "Al"}
    assert hits(sql_texts(leza.storage), S.values()) == []


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")
