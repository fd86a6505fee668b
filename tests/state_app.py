"""The app tests/test_state_acceptance.py serves with uvicorn (a subprocess).

A Starlette app with the middleware (configured from ``LEZA_*`` variables),
signed in by an ``X-User`` header (the performer hook, so endpoint permissions
are decided before the app runs), an endpoint permission (``GET /admin/*``
needs "Admin Permission", which only alice holds), a deliberately slow
endpoint, one that fails, one that refuses by itself, a login form, two
availability checks on the URLs it is given (``STATE_UP_URL``,
``STATE_FLAKY_URL``), a webhook notifier (``STATE_WEBHOOK``) and the admin
view at ``/leza`` for requests carrying ``X-Admin: yes``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from leza_middleware import Leza, LezaMiddleware, Performer
from leza_middleware.dashboard import make_asgi_app

SLOW_SECONDS = 0.2


def performer(conn: HTTPConnection) -> Performer | None:
    name = conn.headers.get("x-user")
    return Performer(id=name, name=name.title()) if name else None


leza = Leza(  # storage, secret key, flush interval, spill dir: LEZA_* variables
    performer=performer,
    permissions={"Admin Permission": ["GET /admin/*"]},
    has_permission=lambda who, request, permission: who.id == "alice",
)
leza.notify.webhook(os.environ["STATE_WEBHOOK"])
# Probes every second with a 1 s timeout (not 0.2 s), so a loaded test machine does not turn a
# slow answer into an outage the test did not make (the outage is the 503s).
leza.availability.http("billing", os.environ["STATE_UP_URL"], interval=1, timeout=1, retries=1)
leza.availability.http("payments", os.environ["STATE_FLAKY_URL"], interval=1, timeout=1, retries=2)


async def item(request: Request) -> Any:
    item_id = int(request.path_params["item_id"])
    if item_id > 100:
        return JSONResponse({"detail": "no such item"}, status_code=404)
    return JSONResponse({"item": item_id})


async def admin_panel(request: Request) -> Any:
    return PlainTextResponse("the admin panel")


async def forbidden(request: Request) -> Any:
    return PlainTextResponse("not for you", status_code=403)


async def boom(request: Request) -> Any:
    # A handled failure: an unhandled one makes uvicorn reset the keep-alive
    # connection, and a client retry would count twice.
    return PlainTextResponse("a deliberate failure", status_code=500)


async def slow(request: Request) -> Any:
    await asyncio.sleep(SLOW_SECONDS)
    return PlainTextResponse("finally")


async def login(request: Request) -> Any:
    who = performer(request)
    if who is None:
        leza.sessions.login_failed("no such user")
        return PlainTextResponse("who are you?", status_code=401)
    leza.sessions.login(who)
    return PlainTextResponse(f"hello {who.name}")


app = Starlette(
    routes=[
        Route("/items/{item_id}", item),
        Route("/admin/panel", admin_panel),
        Route("/forbidden", forbidden),
        Route("/boom", boom),
        Route("/slow", slow),
        Route("/login", login, methods=["POST"]),
        Mount("/leza", make_asgi_app(leza, authorize=lambda r: r.headers.get("x-admin") == "yes")),
    ]
)
app.add_middleware(LezaMiddleware, leza=leza)
