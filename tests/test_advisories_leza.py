"""Advisories end to end: a real app's logins → stored findings linked to stored events
→ a notification at a real webhook receiver; quiet for ordinary traffic."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import wait_for
from mmdb_factory import FRANKFURT, LONDON, SAN_DIEGO
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from leza_middleware import Leza, LezaMiddleware, Performer
from leza_middleware.errors import LezaConfigError

PROXY = "203.0.113.9"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


def _app(leza: Leza) -> Any:
    async def login(request: Request) -> PlainTextResponse:
        name = request.path_params["name"]
        leza.sessions.login(Performer(id=name, name=name.title()))
        return PlainTextResponse("in")

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("page")

    app = Starlette(routes=[Route("/login/{name}", login, methods=["POST"]), Route("/", page)])
    return LezaMiddleware(app, leza=leza)


async def _send(app: Any, method: str, path: str, ip: str) -> None:
    transport = httpx.ASGITransport(app=app, client=(PROXY, 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.request(
            method, path, headers={"x-forwarded-for": ip, "user-agent": CHROME}
        )
        assert r.status_code == 200


@pytest.mark.anyio
async def test_impossible_travel_is_stored_with_evidence_and_notified(
    make_leza: Any, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, bodies = webhook
    leza = make_leza(trusted_proxies=[PROXY])
    leza.notify.webhook(url)
    app = _app(leza)
    await _send(app, "POST", "/login/alice", LONDON.ip)
    await _send(app, "POST", "/login/alice", SAN_DIEGO.ip)  # seconds later, 8,700 km away
    assert leza.flush(5)
    leza.flush(5)  # the advisories derived from the last batch

    advisories = leza.query.advisories()
    travel = [a for a in advisories if a["rule"] == "impossible_travel"]
    assert len(travel) == 1
    finding = travel[0]
    assert finding["severity"] == "high"
    assert finding["performer_id"] == "alice"
    assert "London" in finding["message"]
    assert "San Diego" in finding["message"]
    logins = {e["_id"]: e for e in leza.query.access(action="login")}
    assert len(logins) == 2
    assert set(finding["evidence"]) == set(logins)  # links to the stored events
    # High severity and above reaches the notifiers (advisory_notify="high").
    assert wait_for(lambda: any(b["event"] == "advisory" for b in bodies))
    (sent,) = [b for b in bodies if b["event"] == "advisory"]
    assert sent["severity"] == "high"
    assert sent["details"]["rule"] == "impossible_travel"
    assert sent["details"]["advisory_id"] == finding["_id"]
    assert leza.stats()["advisories"]["findings"]["impossible_travel"] == 1


@pytest.mark.anyio
async def test_ordinary_traffic_raises_nothing(make_leza: Any) -> None:
    leza = make_leza(trusted_proxies=[PROXY])
    app = _app(leza)
    await _send(app, "POST", "/login/bob", FRANKFURT.ip)
    for _ in range(20):
        await _send(app, "GET", "/", FRANKFURT.ip)
    await _send(app, "POST", "/login/bob", FRANKFURT.ip)  # same place, same browser
    assert leza.flush(5)
    leza.flush(5)
    assert leza.query.advisories() == []
    assert len(leza.query.access(limit=100)) == 22


@pytest.mark.anyio
async def test_advisories_can_be_turned_off_or_replaced(make_leza: Any) -> None:
    from leza_middleware.advisories import ImpossibleTravel, NewCountry

    off = make_leza(trusted_proxies=[PROXY], advisories=False)
    assert off.advisories is None
    app = _app(off)
    await _send(app, "POST", "/login/carol", LONDON.ip)
    await _send(app, "POST", "/login/carol", SAN_DIEGO.ip)
    assert off.flush(5)
    assert off.query.advisories() == []

    only = make_leza(advisory_rules=[NewCountry(days=30)], advisory_notify="off")
    assert only.advisories is not None
    assert [r.name for r in only.advisories.rules] == ["new_country"]
    assert only.settings.advisory_notify is None
    with pytest.raises(LezaConfigError, match="advisory Rule"):
        make_leza(advisory_rules=["impossible_travel"])
    with pytest.raises(LezaConfigError, match="advisory_notify"):
        make_leza(advisory_notify="urgent")
    assert ImpossibleTravel().name == "impossible_travel"
