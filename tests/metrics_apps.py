"""What tests/test_metrics.py serves with gunicorn (4 sync workers, PROMETHEUS_MULTIPROC_DIR).

``metrics_apps:flask_app``: Flask with ``leza.init_app`` (configured from
``LEZA_*`` variables), and ``/metrics`` dispatched outside it to
``make_wsgi_app(leza)``, so scrapes are not recorded as requests. Each worker
builds the app (no ``--preload``) and feeds its own values file.

This module is also the gunicorn config file (``-c``): its ``child_exit`` hook
tells prometheus_client a worker is gone, so the ``live*`` gauges forget it.
"""

from __future__ import annotations

import os
from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _flask_app() -> Any:
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from leza_middleware import Leza
    from leza_middleware.metrics import make_wsgi_app

    app = Flask("metrics_flask")

    @app.get("/")
    def hello() -> str:
        return str(os.getpid())

    leza = Leza()
    leza.init_app(app)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/metrics": make_wsgi_app(leza)}
    )
    return app


_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name != "flask_app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _built:
        _built[name] = _flask_app()
    return _built[name]
