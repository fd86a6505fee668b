"""Prometheus metrics of an app, fed from leza's recorder thread (``[prometheus]`` extra).

::

    metrics = leza.metrics()                       # or register(leza, registry)
    app.mount("/metrics", make_asgi_app(leza))     # Starlette / FastAPI
    # WSGI: make_wsgi_app(leza); Django: path("metrics", make_django_view())

Request counts and a latency histogram per method + route template + outcome,
each check's state and last latency, and the recorder's own counters. Nothing
is added to the request path: the recorder thread counts the events it
prepares anyway. Under gunicorn, set ``PROMETHEUS_MULTIPROC_DIR`` and any
worker's ``/metrics`` shows the sum over workers. See ``docs/metrics.md``.
"""

from __future__ import annotations

try:
    import prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "leza_middleware.metrics needs prometheus_client: pip install 'leza-middleware[prometheus]'"
    ) from exc

from .exposition import exposition_registry, make_asgi_app, make_django_view, make_wsgi_app
from .feed import (
    DEFAULT_BUCKETS,
    METHODS,
    OTHER_METHOD,
    OTHER_ROUTE,
    OUTCOMES,
    UNMATCHED,
    LezaMetrics,
    outcome_of,
    register,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "METHODS",
    "OTHER_METHOD",
    "OTHER_ROUTE",
    "OUTCOMES",
    "UNMATCHED",
    "LezaMetrics",
    "exposition_registry",
    "make_asgi_app",
    "make_django_view",
    "make_wsgi_app",
    "outcome_of",
    "register",
]
