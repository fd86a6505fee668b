"""The app tests/test_scaling_acceptance.py serves with gunicorn (4 uvicorn workers).

A Starlette app with ``LezaMiddleware``, configured only from ``LEZA_*``
variables as a deployment would be: ``LEZA_STORAGE`` (PostgreSQL, for audit,
sessions and checks), ``LEZA_STORAGE_ACCESS`` and ``LEZA_STORAGE_LOG``
(ClickHouse over two shards), the secret key, the spill directory and the
flush interval.

* ``GET /items/{n}``: the page; answers with the pid of the worker;
* ``POST /login``: signs in the ``X-User`` header's person (a new session,
  its cookie) and records an audit row ``login`` on entity ``user``;
* ``POST /logout``: ends that session and records an audit row ``logout``.

Every request logs exactly one line (``served <request id>``) through
``leza.logging_handler()``, so the LOG tab gets one record per request. The
performer hook reads ``X-User``. One availability check (``tcp`` on
``SCALE_CHECK_PORT``, the PostgreSQL server) is probed by whichever worker
leads (a PostgreSQL advisory lock): its results go to PostgreSQL too.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from leza_middleware import Leza, LezaMiddleware, Performer


def performer(conn: HTTPConnection) -> Performer | None:
    name = conn.headers.get("x-user")
    return Performer(id=name, name=name.title()) if name else None


leza = Leza(performer=performer)  # storage, secret key, spill dir, flush interval: LEZA_*
leza.availability.tcp(
    "postgres", "127.0.0.1", int(os.environ["SCALE_CHECK_PORT"]), interval=1, timeout=1
)

log = logging.getLogger("scaling_app")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(leza.logging_handler())


def _served(request: Request) -> None:
    log.info("served %s", request.headers.get("x-request-id", "-"))


async def item(request: Request) -> Any:
    _served(request)
    return PlainTextResponse(str(os.getpid()))


async def login(request: Request) -> Any:
    _served(request)
    who = performer(request)
    if who is None:
        leza.sessions.login_failed("no such user")
        return PlainTextResponse("who are you?", status_code=401)
    leza.sessions.login(who)
    leza.audit.record(action="login", entity_type="user", entity_id=who.id,
                      after={"signed_in": True})  # fmt: skip
    return PlainTextResponse(str(os.getpid()))


async def logout(request: Request) -> Any:
    _served(request)
    who = performer(request)
    leza.sessions.logout()
    leza.audit.record(action="logout", entity_type="user", entity_id=who.id if who else "-",
                      before={"signed_in": True}, after={"signed_in": False})  # fmt: skip
    return PlainTextResponse(str(os.getpid()))


app = Starlette(
    routes=[
        Route("/items/{n}", item),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
)
app.add_middleware(LezaMiddleware, leza=leza)
