"""Serving ``/metrics``: an ASGI app, a WSGI app and a Django view.

Each serves the registry given (default: prometheus_client's ``REGISTRY``),
or, when ``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn and other pre-fork
servers), every worker's values summed from that directory through
prometheus_client's ``MultiProcessCollector``: whichever worker answers the
scrape shows the whole app.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ..errors import LezaConfigError
from .feed import register

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = [
    "MetricsASGIApp",
    "exposition_registry",
    "make_asgi_app",
    "make_django_view",
    "make_wsgi_app",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def exposition_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """What ``/metrics`` serves: every worker's values under ``PROMETHEUS_MULTIPROC_DIR``,
    else ``registry`` (default ``REGISTRY``)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY if registry is None else registry
    if not os.path.isdir(directory):
        raise LezaConfigError(
            f"{MULTIPROC_ENV}={directory!r} is not a directory: create it (empty) before the "
            "workers start"
        )
    from prometheus_client import multiprocess

    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
    return merged


def _prepare(
    leza: Leza | None, registry: CollectorRegistry | None, options: dict[str, Any]
) -> CollectorRegistry:
    if leza is not None:
        register(leza, registry, **options)
    elif options:
        raise LezaConfigError(f"metrics options {sorted(options)} need a leza to register")
    return exposition_registry(registry)


class MetricsASGIApp:
    """The ASGI app :func:`make_asgi_app` returns (a class, so Starlette's
    ``Route("/metrics", app)`` takes it as an app, not as a request handler)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._inner = prometheus_client.make_asgi_app(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            await self._inner(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})


def make_asgi_app(
    leza: Leza | None = None, registry: CollectorRegistry | None = None, **options: Any
) -> MetricsASGIApp:
    """An ASGI app answering every GET with the metrics.

    ``Route("/metrics", make_asgi_app(leza))`` in Starlette/FastAPI (or
    ``app.mount("/metrics", ...)``, which redirects ``/metrics`` to
    ``/metrics/``). With ``leza``, registers it first
    (:func:`~leza_middleware.metrics.register`, which takes ``options``).
    Answers the lifespan protocol, so it can also be served on its own.
    """
    return MetricsASGIApp(_prepare(leza, registry, options))


def make_wsgi_app(
    leza: Leza | None = None, registry: CollectorRegistry | None = None, **options: Any
) -> WSGIApp:
    """A WSGI app answering GET with the metrics (e.g. under Werkzeug's
    ``DispatcherMiddleware`` at ``/metrics``). ``leza`` and ``options`` as for
    :func:`make_asgi_app`."""
    app: WSGIApp = prometheus_client.make_wsgi_app(_prepare(leza, registry, options))
    return app


def make_django_view(
    leza: Leza | None = None, registry: CollectorRegistry | None = None, **options: Any
) -> Callable[[Any], Any]:
    """A Django view serving the metrics: ``path("metrics", make_django_view())``.

    Without ``leza``, registers ``settings.LEZA``'s (``get_leza()``) when called,
    i.e. when ``urls.py`` is loaded.
    """
    from django.http import HttpResponse

    if leza is None:
        from ..django.conf import get_leza

        leza = get_leza()
    served = _prepare(leza, registry, options)

    def metrics_view(request: Any) -> Any:
        if request.method not in ("GET", "HEAD"):
            response = HttpResponse(status=405)
            response["Allow"] = "GET, HEAD"
            return response
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return HttpResponse(encoder(served), content_type=content_type)

    return metrics_view
