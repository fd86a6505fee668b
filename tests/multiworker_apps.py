"""Apps that tests/test_multiworker.py serves with gunicorn (4 workers).

Both are configured only from ``LEZA_*`` environment variables (storage URL,
spill directory, flush interval, secret key, GeoIP), as a deployment would:

* ``multiworker_apps:flask_app``: Flask with ``leza.init_app`` (WSGI, sync workers);
* ``multiworker_apps:starlette_app``: Starlette with ``LezaMiddleware`` (ASGI,
  ``uvicorn_worker.UvicornWorker``).

Each answers ``GET /`` with the pid of the worker that served it, so the test
knows which worker answered which request (and which ones a SIGKILLed worker
took with it). When it is loaded, each app logs one ``app loaded in pid N`` record
through ``leza.logging_handler()``: with ``--preload`` that happens once, in the
gunicorn master, whose recorder thread is then running while the master forks
its workers; it must be stored exactly once.

An app is built on first access (module ``__getattr__``), so a process holds
only the ``Leza`` of the app it serves: with ``--preload`` in the master, which
the workers inherit by ``fork``; without it, in each worker.
"""

from __future__ import annotations

import logging
import os
from typing import Any

LOADED = "app loaded in pid"


def _announce(leza: Any, name: str) -> None:
    """The app's own logging goes to Leza's LOG tab; say where the app was loaded."""
    logger = logging.getLogger(f"multiworker.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(leza.logging_handler())
    logger.info("%s %d", LOADED, os.getpid())


def _flask_app() -> Any:
    from flask import Flask

    from leza_middleware import Leza

    app = Flask("multiworker_flask")

    @app.get("/")
    def hello() -> str:
        return str(os.getpid())

    leza = Leza()  # LEZA_STORAGE, LEZA_SPILL_DIR, LEZA_FLUSH_INTERVAL, LEZA_SECRET_KEY, …
    leza.init_app(app)
    _announce(leza, "flask")
    return app


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from leza_middleware import Leza, LezaMiddleware

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(os.getpid()))

    leza = Leza()
    _announce(leza, "starlette")
    return Starlette(routes=[Route("/", hello)], middleware=[Middleware(LezaMiddleware, leza=leza)])


_FACTORIES = {"flask_app": _flask_app, "starlette_app": _starlette_app}
_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _built:
        _built[name] = factory()
    return _built[name]
