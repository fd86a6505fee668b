"""The JSON of every event a fixed set of requests records, pinned (issue 17).

tests/golden/traffic.json was generated from main's code before the recorder's
access path was reworked (no event object per record when nothing needs one):
the same traffic must still produce the same JSON, ids and times aside, as the
listeners (``capture_events``), the JSON Lines file and SQLite read back see
it. A change here is a change of what users store: it needs an upgrade note in
CHANGELOG.md, never a regenerated golden file.

Regenerate only on purpose: ``REGENERATE_TRAFFIC_GOLDEN=1 pytest tests/test_traffic_golden.py``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mmdb_factory import FRANKFURT_IP
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from leza_middleware import Leza, LezaMiddleware, Performer
from leza_middleware.testing import capture_events

GOLDEN = Path(__file__).parent / "golden" / "traffic.json"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
PROXY = ("10.0.0.7", 50000)  # every request comes through this trusted proxy
USERS = {
    "ada": Performer(
        id="u-ada",
        name="Ada Lovelace",
        email="ada@example.com",
        organization_id="o-1",
        role_name="admin",
        permissions=frozenset({"Admin Permission"}),
    ),
    "guest": Performer(id="u-guest", name="Guest"),
}
RULES = {"Admin Permission": ["/admin", "/admin/*"]}
# A long path of strange Unicode: combining marks, RTL, emoji, a NUL, a lone
# surrogate's escape, zero-width joiners, and more than the stored cap.
STRANGE = "/files/" + "e\u0301\u202e\U0001f468\u200d\U0001f469%00%0A%ED%A0%80\ufeff/" * 120


def who(request: Any) -> Performer | None:
    return USERS.get(request.headers.get("x-user", ""))


def make_app(leza: Leza) -> Starlette:
    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def login(request: Request) -> PlainTextResponse:
        name = request.path_params["name"]
        if name not in USERS:
            leza.sessions.login_failed("Unknown user", username=name)
            return PlainTextResponse("no", status_code=200)  # a form answering 200
        leza.sessions.login(USERS[name])
        return PlainTextResponse("in")

    async def logout(request: Request) -> PlainTextResponse:
        leza.sessions.logout(performer=USERS["ada"])
        return PlainTextResponse("out")

    async def forbidden(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=403)

    async def boom(request: Request) -> PlainTextResponse:
        raise ValueError("kaput")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/items/{item_id:int}", page),
            Route("/search", page),
            Route("/admin/{rest:path}", page, methods=["GET", "POST"]),
            Route("/login/{name}", login, methods=["POST"]),
            Route("/logout", logout),
            Route("/forbidden", forbidden),
            Route("/boom", boom),
            Route("/files/{rest:path}", page),
            WebSocketRoute("/ws", ws),
        ]
    )
    app.add_middleware(LezaMiddleware, leza=leza)
    return app


def send_traffic(client: TestClient) -> None:
    """The fixed request set, in order (each waits for the previous one)."""
    xff = {"x-forwarded-for": FRANKFURT_IP}
    client.get("/", headers={"user-agent": CHROME, **xff})  # anonymous, geolocated
    client.get("/items/42", headers={"user-agent": CHROME, "x-user": "ada", **xff})
    client.post("/login/ada", headers={"user-agent": IPHONE, **xff})
    client.get("/admin/users", headers={"user-agent": IPHONE, "x-user": "ada", **xff})
    client.get("/logout", headers={"user-agent": IPHONE, **xff})
    client.post("/login/mallory", headers={"user-agent": CHROME, **xff})  # login failure
    client.get("/admin/users", headers={"user-agent": CHROME, "x-user": "guest"})  # lacks it
    client.post("/admin", headers={"user-agent": CHROME})  # unauthenticated: 401
    client.get("/forbidden", headers={"user-agent": CHROME, "x-user": "guest"})  # app's 403
    client.get("/boom", headers={"user-agent": CHROME})  # 500
    client.get(
        "/search?q=shoes&token=abc123&password=hunter2&api_key=k-1&next=%2Fa%3Fsecret%3Dx",
        headers={"user-agent": CHROME, "authorization": "Bearer t0ps3cret", **xff},
    )
    client.get(STRANGE, headers={"user-agent": "Mozilla/5.0 \u202e weird\u00e9".encode()})
    with client.websocket_connect("/ws", headers={"user-agent": CHROME, **xff}) as ws:
        ws.receive_text()
    client.get("/", headers={"user-agent": GOOGLEBOT, "x-forwarded-for": "66.249.66.1"})
    client.get(  # an IPv6 client through the trusted proxy
        "/items/7", headers={"user-agent": CHROME, "x-forwarded-for": "2001:db8::1, 10.0.0.9"}
    )
    client.get("/nowhere", headers={"user-agent": ""})  # 404, no User-Agent
    client.post("/login/ada", headers={"user-agent": GOOGLEBOT})  # a bot logging in: advisory
    for _ in range(10):  # a burst of failed logins from one address: advisory
        client.post("/login/root", headers={"user-agent": CHROME, "x-forwarded-for": "203.0.113.5"})


# Values that differ from run to run, by key: ids (numbered, so that links
# between events stay visible) and times (all alike).
_IDS = {"_id", "request_id", "session_id", "session_id_hash", "machine_identifier", "evidence"}
_TIMES = {"timestamp", "started_at", "session_start", "last_seen", "ended_at", "first_seen"}
_ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


class _Normaliser:
    """Replaces each distinct volatile value by a placeholder numbered in order of
    appearance: links between events (an access's session hash and its session
    event's id) stay visible, the values themselves do not."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def placeholder(self, key: str, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, list):
            return [self.placeholder(key, v) for v in value]
        text = json.dumps(value)
        if text not in self.seen:
            self.seen[text] = f"<{key}:{len(self.seen)}>"
        return self.seen[text]

    def __call__(self, data: Any, key: str = "") -> Any:
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for k, v in data.items():
                if k in _IDS:
                    out[k] = self.placeholder(k, v)
                elif k in _TIMES and v is not None:
                    out[k] = "<time>"
                elif k == "duration_ms":
                    out[k] = "<duration>" if isinstance(v, (int, float)) and v >= 0 else v
                else:
                    out[k] = self(v, k)
            return out
        if isinstance(data, list):
            return [self(v, key) for v in data]
        if isinstance(data, str) and _ISO_TIME.match(data):
            return "<time>"  # a time inside details (an advisory's window)
        return data


def normalise(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events in a deterministic order (request order, then kind and action), with
    their volatile values replaced; the JSON text keeps its key order."""
    ordered = sorted(
        events,
        key=lambda e: (e.get("timestamp", ""), e.get("kind", ""), e.get("action", "")),
    )
    norm = _Normaliser()
    return [norm(e) for e in ordered]


def record(tmp_path: Path, city_db: Path, storage: str) -> dict[str, list[dict[str, Any]]]:
    """The fixed traffic through one Leza: captured, and as its storage reads back."""
    leza = Leza(
        storage=storage,
        geoip_db=str(city_db),
        spill_dir=str(tmp_path / f"spill-{storage.split(':')[0]}"),
        flush_interval=0.05,
        secret_key="tests-secret-key-0123456789",
        trusted_proxies=["10.0.0.0/8"],
        performer=who,
        permissions=RULES,
        app_name="Golden App",
    )
    try:
        with (
            capture_events() as captured,
            TestClient(make_app(leza), client=PROXY, raise_server_exceptions=False) as client,
        ):
            send_traffic(client)
        assert leza.flush(5)
        stored = list(leza.query.access(limit=1000)) + leza.query.sessions(limit=1000).items
        stored += leza.query.advisories(limit=1000)
        return {"captured": list(captured), "stored": stored}
    finally:
        leza.shutdown(timeout=2)


STORAGES: dict[str, Callable[[Path], str]] = {
    "jsonl": lambda tmp: f"jsonl://{tmp / 'events.jsonl'}",
    "sqlite": lambda tmp: f"sqlite:///{tmp / 'leza.db'}",
    "memory": lambda tmp: "memory://",
}


@pytest.mark.parametrize("backend", sorted(STORAGES))
def test_fixed_traffic_records_the_same_json(backend: str, tmp_path: Path, city_db: Path) -> None:
    seen = record(tmp_path, city_db, STORAGES[backend](tmp_path))
    got = {part: normalise(events) for part, events in seen.items()}
    if os.environ.get("REGENERATE_TRAFFIC_GOLDEN"):
        current = json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.exists() else {}
        current[backend] = got
        GOLDEN.write_text(
            json.dumps(current, ensure_ascii=False, indent=1, sort_keys=False) + "\n",
            encoding="utf-8",
        )
        pytest.skip("golden file regenerated")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))[backend]
    for part in ("captured", "stored"):
        assert len(got[part]) == len(want[part]), part
        for g, w in zip(got[part], want[part], strict=True):
            # The exact text: a changed value, a missing or extra key, or a
            # different key order all fail.
            assert json.dumps(g, ensure_ascii=False) == json.dumps(w, ensure_ascii=False)


def test_the_golden_traffic_covers_every_case() -> None:
    """The golden file holds what the request set is meant to exercise (so a
    regeneration that lost a case would show)."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert set(golden) == set(STORAGES)
    captured = golden["sqlite"]["captured"]
    access = [e for e in captured if e["kind"] == "access"]
    actions = {e["action"] for e in access}
    assert {"access", "login", "logout", "login_failed", "denied"} <= actions
    assert {e["status"] for e in access} >= {200, 401, 403, 404, 500}
    assert any(e["endpoint_type"] == "WS" for e in access)
    assert any(e["bot"] for e in access)
    assert any(e["ip"] == "2001:db8::1" and e["peer_ip"] == "10.0.0.7" for e in access)
    assert any(e["performer"] and e["performer"]["id"] == "u-ada" for e in access)
    assert any(e["geoLocationInfoOfIp"] for e in access)
    search = next(e for e in access if e["endpoint"].startswith("/search"))
    for secret in ("abc123", "hunter2", "k-1", "t0ps3cret"):
        assert secret not in json.dumps(golden)
    assert "[Filtered]" in search["endpoint"]
    assert any(e["kind"] == "session" for e in captured)
    rules = {e["rule"] for e in captured if e["kind"] == "advisory"}
    assert {"bot_login", "burst"} <= rules
