"""The running request under ASGI (``context.REQUEST``): current in the app, its
background tasks and the tasks it spawns; *not* in the context the server copies
while it sends the last body message (where uvicorn arms its keep-alive timer,
whose copy outlives the request by seconds and would keep its scope alive)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from leza_middleware import LezaMiddleware, current_request_id
from leza_middleware.context import REQUEST, current_native

pytestmark = pytest.mark.anyio


def http_scope(path: str, request_id: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"x-request-id", request_id)],
        "client": ("203.0.113.9", 5555),
        "server": ("testserver", 80),
    }


class Server:
    """The server's side of one request: what its ``send`` saw of the context.

    For every message it copies the context, as ``loop.call_later`` does when
    uvicorn arms its keep-alive timer on the last one."""

    def __init__(self) -> None:
        self.copies: list[tuple[str, bool, Any]] = []
        self.received = False
        self.done = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if not self.received:
            self.received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.done.wait()  # a streaming response listens for the disconnect
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        copy = contextvars.copy_context()
        last = message["type"] == "http.response.body" and not message.get("more_body", False)
        self.copies.append((message["type"], last, copy.get(REQUEST)))
        await asyncio.sleep(0)
        if last:
            self.done.set()


async def test_the_last_send_runs_without_the_request_and_the_app_keeps_it(
    make_leza: Any,
) -> None:
    seen: dict[str, Any] = {}

    def after_response() -> None:  # a Starlette background task: after the last send
        seen["background"] = current_request_id()
        seen["background_native"] = current_native()

    async def spawned() -> None:
        await asyncio.sleep(0.01)
        seen["spawned"] = current_request_id()

    async def home(request: Request) -> PlainTextResponse:
        seen["endpoint"] = current_request_id()
        seen["task"] = asyncio.ensure_future(spawned())  # outlives the response
        return PlainTextResponse("hi", background=BackgroundTask(after_response))

    leza = make_leza()
    app = LezaMiddleware(Starlette(routes=[Route("/", home)]), leza=leza)
    server = Server()
    scope = http_scope("/", b"ctx-test-0001")
    await app(scope, server.receive, server.send)
    await seen["task"]

    assert seen["endpoint"] == seen["background"] == seen["spawned"] == "ctx-test-0001"
    assert seen["background_native"] is scope
    (start, start_last, at_start), (body, body_last, at_body) = server.copies
    assert (start, start_last, body, body_last) == (
        "http.response.start", False, "http.response.body", True,
    )  # fmt: skip
    assert at_start is not None
    assert at_start[1] is scope  # the request is current...
    assert at_body is None  # ...but not in what the server copies as it sends the last byte
    assert current_request_id() is None  # and gone once the request is over
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["request_id"] == "ctx-test-0001"
    assert event["status"] == 200
    assert leza.stats()["request_path_errors"] == 0


async def test_nested_requests_restore_the_outer_one(make_leza: Any) -> None:
    """An app inside the request of another (a leza inside a leza): the inner last
    send leaves the outer request current, and the outer one ends as usual."""
    seen: list[str | None] = []

    async def inner_home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("inner")

    leza = make_leza()
    inner = LezaMiddleware(Starlette(routes=[Route("/", inner_home)]), leza=leza)

    async def outer_app(scope: Any, receive: Any, send: Any) -> None:
        server = Server()
        await inner(http_scope("/", b"inner-req-0001"), server.receive, server.send)
        seen.append(server.copies[-1][2][0] if server.copies[-1][2] else None)
        seen.append(current_request_id())
        await PlainTextResponse("outer")(scope, receive, send)

    outer = LezaMiddleware(outer_app, leza=leza)
    server = Server()
    await outer(http_scope("/", b"outer-req-0001"), server.receive, server.send)
    # During the inner request's last send the outer request is current again.
    assert seen == [b"outer-req-0001", "outer-req-0001"]
    assert server.copies[-1][2] is None
    assert leza.flush(5)
    assert sorted(e["request_id"] for e in leza.query.access()) == [
        "inner-req-0001",
        "outer-req-0001",
    ]


async def test_a_streamed_last_message_from_another_task_is_sent_as_is(make_leza: Any) -> None:
    """Starlette may send a streaming body from a task of its own, whose context is
    a copy: the request cannot be un-set there, and the send goes through as is."""
    seen: list[str | None] = []

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(3):
                seen.append(current_request_id())
                yield f"chunk{i}\n".encode()

        return StreamingResponse(chunks())

    leza = make_leza()
    app = LezaMiddleware(Starlette(routes=[Route("/s", stream)]), leza=leza)

    async def sender(message: dict[str, Any]) -> None:
        await server.send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            await asyncio.get_running_loop().run_in_executor(None, lambda: None)

    server = Server()
    await app(http_scope("/s", b"stream-req-0001"), server.receive, sender)
    assert seen == ["stream-req-0001"] * 3
    last = server.copies[-1]
    assert last[:2] == ("http.response.body", True)
    assert last[2] is not None
    assert last[2][0] == b"stream-req-0001"  # as is: still current
    assert leza.flush(5)
    [event] = leza.query.access()
    assert event["request_id"] == "stream-req-0001"
    assert event["status"] == 200
    assert leza.stats()["request_path_errors"] == 0
