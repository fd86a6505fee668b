"""Apps that tests/test_revocation_startup.py serves with uvicorn and gunicorn.

Configured from ``LEZA_*`` environment variables (storage, spill directory,
secret key, GeoIP off, the revocation settings), as a deployment would:

* ``revocation_apps:starlette_app``: Starlette with ``LezaMiddleware`` (uvicorn,
  or gunicorn with ``uvicorn_worker.UvicornWorker``);
* ``revocation_apps:flask_app``: Flask with ``leza.init_app`` (gunicorn, sync workers);
* ``revocation_apps:django_app``: a Django project — this module is also its
  settings (``DJANGO_SETTINGS_MODULE=revocation_apps``) and its URLconf — with
  signed-cookie sessions, so it needs no database of its own.

Every app answers ``GET /login`` by signing ``alice`` in (a session cookie is
issued), ``GET /`` with the pid of the worker, and ``GET /stats`` with
``leza.stats()["revocations"]`` as JSON. The revoked-session response carries
the pid too (``X-Leza-Pid``), so a test knows which worker refused a request.

With ``REVOCATION_TEST_WARM_MASTER=1`` the app, when built, decides one session
at once: its blocklist is loaded where the app is loaded — with gunicorn
``--preload``, in the master, whose workers inherit it by ``fork`` (and must
load their own before deciding).
"""

from __future__ import annotations

import json
import os
from typing import Any

# ----------------------------------------------------------------------------- shared hooks


def revoked_response(request: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [("Content-Type", "application/json"), ("X-Leza-Pid", str(os.getpid()))]
    return 401, headers, b'{"detail":"refused"}'


def _warm(leza: Any) -> None:
    if os.environ.get("REVOCATION_TEST_WARM_MASTER") == "1":
        leza.sessions.refusal("warm-up-before-fork")


def _stats(leza: Any) -> bytes:
    return json.dumps(leza.stats()["revocations"]).encode()


# ----------------------------------------------------------------------------- Starlette


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response
    from starlette.routing import Route

    from leza_middleware import Leza, LezaMiddleware

    def performer(request: HTTPConnection) -> dict[str, str] | None:
        return {"id": "alice", "name": "Alice"} if request.url.path == "/login" else None

    leza = Leza(performer=performer, revoked_response=revoked_response)
    _warm(leza)

    async def home(request: Request) -> Response:
        return Response(str(os.getpid()))

    async def stats(request: Request) -> Response:
        return Response(_stats(leza), media_type="application/json")

    routes = [Route("/", home), Route("/login", home), Route("/stats", stats)]
    return Starlette(routes=routes, middleware=[Middleware(LezaMiddleware, leza=leza)])


# ----------------------------------------------------------------------------- Flask


def _flask_app() -> Any:
    from flask import Flask, Request

    from leza_middleware import Leza

    def performer(request: Request) -> dict[str, str] | None:
        return {"id": "alice", "name": "Alice"} if request.path == "/login" else None

    app = Flask("revocation_flask")

    @app.get("/")
    @app.get("/login")
    def home() -> str:
        return str(os.getpid())

    leza = Leza(performer=performer, revoked_response=revoked_response)

    @app.get("/stats")
    def stats() -> Any:
        return app.response_class(_stats(leza), mimetype="application/json")

    leza.init_app(app)
    _warm(leza)
    return app


# ----------------------------------------------------------------------------- Django
# (this module as settings.py and urls.py)

SECRET_KEY = "revocation-tests-not-a-secret-0123456789"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "revocation_apps"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.sessions", "leza_middleware.django"]
MIDDLEWARE = [
    "leza_middleware.django.LezaDjangoMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
DATABASES: dict[str, Any] = {}
LEZA = {
    "performer": "revocation_apps.django_performer",
    "revoked_response": "revocation_apps.revoked_response",
}


def django_performer(request: Any) -> dict[str, str] | None:
    user = request.session.get("user")
    return None if user is None else {"id": user, "name": user.title()}


def _django_views() -> list[Any]:
    from django.http import HttpResponse
    from django.urls import path

    from leza_middleware.django import get_leza

    def home(request: Any) -> HttpResponse:
        return HttpResponse(str(os.getpid()))

    def login(request: Any) -> HttpResponse:
        request.session["user"] = "alice"
        return HttpResponse(str(os.getpid()))

    def stats(request: Any) -> HttpResponse:
        return HttpResponse(_stats(get_leza()), content_type="application/json")

    return [path("", home), path("login", login), path("stats", stats)]


def _django_app() -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "revocation_apps")
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    from leza_middleware.django import get_leza

    _warm(get_leza())
    return app


_FACTORIES = {
    "starlette_app": _starlette_app,
    "flask_app": _flask_app,
    "django_app": _django_app,
    "urlpatterns": _django_views,
}
_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _built:
        _built[name] = factory()
    return _built[name]
