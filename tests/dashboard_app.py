"""A small FastAPI app with sign-in, sessions, one audited change and the dashboard at /leza.

Shared by tests/test_dashboard.py (in-process TestClient),
tests/test_dashboard_browser.py (uvicorn + headless Chromium) and
bench/screenshots.py. Users sign in by name with a form (``POST /login``,
no password: this is a test app); ``admin`` may open the dashboard.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)

from leza_middleware import Leza, LezaMiddleware, Performer
from leza_middleware.dashboard import make_asgi_app

#: Debian's package; LEZA_TEST_CHROMIUM overrides it (Playwright drives it by path,
#: so no ``playwright install`` download is needed).
CHROMIUM = os.environ.get("LEZA_TEST_CHROMIUM") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

ADMIN = "admin"
log = logging.getLogger("shop")
#: username -> (full name, e-mail); any other name signs in too, with no details.
USERS = {
    "admin": ("Ada Admin", "ada@example.com"),
    "bob": ("Bob Builder", "bob@example.com"),
    "carol": ("Carol Danvers", "carol@example.com"),
}
LOGIN_PAGE = """<!doctype html><title>Sign in</title>
<form method="post" action="/login">
<input name="username" aria-label="username"><button type="submit">Sign in</button>
</form>"""


class AppUser(BaseUser):
    def __init__(self, username: str) -> None:
        self.username = username
        self.full_name, self.email = USERS.get(username, (username, ""))

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.full_name

    @property
    def identity(self) -> str:
        return self.username

    def performer(self) -> Performer:
        return Performer(id=self.username, name=self.full_name, email=self.email)


class SessionUser(AuthenticationBackend):
    async def authenticate(self, conn: Any) -> Any:
        name = conn.session.get("user")
        return (AuthCredentials(["authenticated"]), AppUser(name)) if name else None


def is_admin(request: Request) -> bool:
    return bool(request.user.is_authenticated and request.user.identity == ADMIN)


def build_app(leza: Leza, authorize: Any = is_admin) -> FastAPI:
    app = FastAPI()

    @app.get("/login")
    async def login_page() -> HTMLResponse:
        return HTMLResponse(LOGIN_PAGE)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode())
        name = form.get("username", [""])[0].strip()
        if not name:
            leza.sessions.login_failed("No username given")
            log.warning("sign-in without a username")
            return PlainTextResponse("who are you?", status_code=400)
        request.session["user"] = name
        leza.sessions.login(AppUser(name).performer())
        return RedirectResponse("/leza/" if name == ADMIN else "/me", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> PlainTextResponse:
        user = request.session.pop("user", None)
        leza.sessions.logout(performer=AppUser(user).performer() if user else None)
        return PlainTextResponse("bye")

    @app.get("/me")
    async def me(request: Request) -> PlainTextResponse:
        if not request.user.is_authenticated:
            return PlainTextResponse("sign in first", status_code=401)
        return PlainTextResponse(f"hello {request.user.display_name}")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.post("/items/{item_id}/rename")
    async def rename(item_id: int, request: Request) -> Response:
        if not request.user.is_authenticated:
            return PlainTextResponse("sign in first", status_code=401)
        form = parse_qs((await request.body()).decode())
        name = form.get("name", ["unnamed"])[0]
        leza.audit.record(  # the actor is the signed-in user of this request
            action="update",
            entity_type="item",
            entity_id=item_id,
            before={"name": f"item {item_id}", "price": 10},
            after={"name": name, "price": 12},
        )
        log.info("item %s renamed to %r", item_id, name)
        return JSONResponse({"item": item_id, "name": name})

    @app.get("/reports/{report_id}")
    async def report(report_id: int, request: Request) -> PlainTextResponse:
        # Refused (403, recorded as ``denied``) unless an admin asks.
        if not request.user.is_authenticated or request.user.identity != ADMIN:
            return PlainTextResponse("reports are for admins", status_code=403)
        return PlainTextResponse(f"report {report_id}")

    app.mount("/leza", make_asgi_app(leza, authorize=authorize))
    app.add_middleware(AuthenticationMiddleware, backend=SessionUser())
    app.add_middleware(SessionMiddleware, secret_key="dashboard-tests-secret")
    app.add_middleware(LezaMiddleware, leza=leza)
    return app


class Served:
    """An ASGI app under uvicorn in a daemon thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # proxy_headers=False: the Leza middleware walks X-Forwarded-For itself.
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
