"""The LOG tab: ``leza.logging_handler()`` on real apps, its guards and its counters."""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from leza_middleware import Leza, LezaMiddleware, Performer
from leza_middleware.events import LogEvent, event_from_dict, log_action

app_log = logging.getLogger("tests.app")


@pytest.fixture
def logged(make_leza: Any) -> Iterator[tuple[Leza, logging.Handler]]:
    leza = make_leza()
    handler = leza.logging_handler()
    app_log.addHandler(handler)
    app_log.setLevel(logging.DEBUG)
    app_log.propagate = False
    yield leza, handler
    app_log.removeHandler(handler)
    app_log.propagate = True


class HeaderUser(AuthenticationBackend):
    async def authenticate(self, conn: Any) -> Any:
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def _app(leza: Leza) -> Starlette:
    async def order(request: Request) -> PlainTextResponse:
        app_log.info("placing order %s", request.path_params["oid"])
        try:
            raise ValueError("card declined")
        except ValueError:
            app_log.exception("payment failed")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/orders/{oid:int}", order)])
    app.add_middleware(AuthenticationMiddleware, backend=HeaderUser())
    app.add_middleware(LezaMiddleware, leza=leza)
    return app


def test_records_written_in_a_request_carry_its_id_performer_and_route(
    logged: tuple[Leza, logging.Handler],
) -> None:
    leza, _ = logged
    with TestClient(_app(leza)) as client:
        response = client.get("/orders/42", headers={"x-user": "alice"})
    rid = response.headers["x-request-id"]
    assert leza.flush(5)
    logs = leza.query.logs()
    assert [r["message"] for r in logs] == ["payment failed", "placing order 42"]  # newest first
    for record in logs:
        assert record["request_id"] == rid
        assert record["performer_id"] == "alice"
        assert record["route"] == "/orders/{oid}"
        assert record["logger"] == "tests.app"
        assert record["origin"].startswith("test_logs.py:")
    failed = logs[0]
    assert failed["action"] == "error"
    assert failed["level"] == logging.ERROR
    assert "ValueError: card declined" in failed["exception"]
    assert logs[1]["exception"] is None
    # The LOG tab filters by level name.
    assert [r["message"] for r in leza.query.logs(action="info")] == ["placing order 42"]
    assert [r["message"] for r in leza.query.logs(performer_id="alice")] == [
        "payment failed",
        "placing order 42",
    ]


def test_records_outside_a_request_have_no_request_fields(
    logged: tuple[Leza, logging.Handler],
) -> None:
    leza, _ = logged
    app_log.warning("cache warm-up took %d ms", 1234)
    assert leza.flush(5)
    (record,) = leza.query.logs()
    assert record["message"] == "cache warm-up took 1234 ms"
    assert record["request_id"] is None
    assert record["performer_id"] is None
    assert record["action"] == "warning"


def test_the_librarys_own_records_never_reenter(make_leza: Any) -> None:
    leza = make_leza()
    handler = leza.logging_handler()
    own = logging.getLogger("leza_middleware")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        own.warning("leza: storage unavailable")  # would loop if recorded
        logging.getLogger("leza_middleware.availability").warning("check down")
        logging.getLogger("tests.elsewhere").warning("app record")
    finally:
        root.removeHandler(handler)
    assert leza.flush(5)
    assert [r["message"] for r in leza.query.logs()] == ["app record"]


def test_reentrant_records_are_dropped_not_looped(make_leza: Any) -> None:
    def performer(request: Any) -> None:
        app_log.error("performer hook logging")  # emitted from inside emit()
        return

    leza = make_leza(performer=performer)
    handler = leza.logging_handler()
    app_log.addHandler(handler)
    app_log.propagate = False

    async def page(request: Request) -> PlainTextResponse:
        app_log.warning("in the page")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/p", page)])
    app.add_middleware(LezaMiddleware, leza=leza)
    try:
        with TestClient(app) as client:
            client.get("/p")
    finally:
        app_log.removeHandler(handler)
        app_log.propagate = True
    assert leza.flush(5)
    messages = [r["message"] for r in leza.query.logs()]
    assert "in the page" in messages
    assert messages.count("performer hook logging") <= 2  # the hook's own calls, no loop


def test_the_performer_hook_is_asked_once_per_request_not_per_record(make_leza: Any) -> None:
    # A hook may look the user up in a database: twenty log lines and an audit
    # record in one request must not mean twenty-one lookups on the app's thread.
    asked: list[str] = []

    def performer(request: Any) -> Performer | None:
        user = request.headers.get("x-user")
        asked.append(user or "-")
        return Performer(id=user) if user else None

    leza = make_leza(performer=performer)
    handler = leza.logging_handler()
    app_log.addHandler(handler)
    app_log.propagate = False

    async def page(request: Request) -> PlainTextResponse:
        for n in range(20):
            app_log.info("step %d", n)
        leza.audit.record(action="update", entity_type="cart", entity_id=1, after={"n": 1})
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/p", page)])
    app.add_middleware(LezaMiddleware, leza=leza)
    try:
        with TestClient(app) as client:
            client.get("/p", headers={"x-user": "alice"})
            client.get("/p")  # anonymous: asked again each time (a sign-in may follow)
    finally:
        app_log.removeHandler(handler)
        app_log.propagate = True
    assert leza.flush(5)
    # alice: once for the records, once by the middleware at the response
    assert asked.count("alice") == 2
    assert asked.count("-") == 22  # 20 lines, the audit record, the middleware
    alice = leza.query.logs(performer_id="alice", limit=100)
    assert len(alice) == 20
    assert leza.query.audit()[1]["actor"]["id"] == "alice"


def test_rate_limit_counts_every_record_not_stored(make_leza: Any) -> None:
    leza = make_leza()
    handler = leza.logging_handler(rate=1, burst=10)
    app_log.addHandler(handler)
    app_log.propagate = False
    try:
        for n in range(50):
            app_log.warning("flood %d", n)
    finally:
        app_log.removeHandler(handler)
        app_log.propagate = True
    assert leza.flush(5)
    stored = leza.query.logs(limit=1000)
    counters = leza.stats()["logs"]
    assert len(stored) == counters["recorded"]
    assert 10 <= len(stored) <= 11  # the burst (plus at most one refilled token)
    assert counters["recorded"] + counters["dropped"]["rate_limited"] == 50


def test_a_flood_cannot_exhaust_memory_or_the_queue(make_leza: Any) -> None:
    leza = make_leza(queue_size=1000, flush_interval=30)
    handler = leza.logging_handler(rate=1e9, burst=10**9)
    app_log.addHandler(handler)
    app_log.propagate = False
    tracemalloc.start()
    try:
        for n in range(20_000):
            app_log.info("flood %d %s", n, "x" * 200)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        app_log.removeHandler(handler)
        app_log.propagate = True
    stats = handler.stats()  # type: ignore[attr-defined]
    # At most half the queue goes to log records: the rest stays for access events.
    assert stats["recorded"] <= 520
    assert stats["recorded"] + stats["dropped"]["backpressure"] == 20_000
    assert peak < 20 * 1024 * 1024, peak


def test_huge_messages_are_cut(logged: tuple[Leza, logging.Handler]) -> None:
    leza, _ = logged
    app_log.warning("x" * 100_000)
    assert leza.flush(5)
    (record,) = leza.query.logs()
    assert len(record["message"]) < 8300
    assert record["message"].endswith("more]")


def test_log_event_round_trips_and_levels_map_to_actions() -> None:
    e = LogEvent(id="l1", ts=1_700_000_000_000_001, level=35, logger="a.b", message="m",
                 exception="tb", request_id="r", performer_id="p", route="/x",
                 origin="f.py:1")  # fmt: skip
    assert e.action == "warning"
    assert not e.priority
    assert event_from_dict(e.to_dict()) == e
    assert [log_action(n) for n in (5, 10, 20, 30, 40, 50, 60)] == [
        "debug", "debug", "info", "warning", "error", "critical", "critical",
    ]  # fmt: skip


def test_control_characters_and_undecodable_bytes_are_made_safe(
    logged: tuple[Leza, logging.Handler],
) -> None:
    leza, _ = logged
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")
    app_log.warning("cannot open %s\n\x1b[31mred\x1b[0m\ttab\x00", name)
    assert leza.flush(5)
    (record,) = leza.query.logs()
    assert record["message"] == "cannot open report-\ufffd.csv\n[31mred[0m\ttab"
    assert leza.stats()["written"] == 1  # the batch was not lost to an encoding error
