"""Django's ASGI application with ASGI lifespan, so queued events are written at shutdown.

Django's ASGI handler refuses the ``lifespan`` scope, and uvicorn ends a graceful
SIGTERM shutdown by re-raising the signal with its default action, which kills
the process before ``atexit`` hooks run: without lifespan, events recorded in the
last ``flush_interval`` before a restart would be lost. In ``asgi.py``::

    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

    from leza_middleware.django.asgi import get_asgi_application
    application = get_asgi_application()

or wrap an application you already build (Channels' ``ProtocolTypeRouter``)::

    application = LezaLifespan(ProtocolTypeRouter({...}))
"""

from __future__ import annotations

import logging
from typing import Any

from ..integrations.lifespan import answer_lifespan

__all__ = ["LezaLifespan", "get_asgi_application", "warn_without_lifespan"]

log = logging.getLogger("leza_middleware")

# Set once a server has run lifespan startup through LezaLifespan: the
# middleware warns (once) when it serves ASGI requests without it.
lifespan_seen = False


def get_asgi_application() -> LezaLifespan:
    """``django.core.asgi.get_asgi_application()`` wrapped in :class:`LezaLifespan`."""
    from django.core.asgi import get_asgi_application as django_asgi_application

    return LezaLifespan(django_asgi_application())


class LezaLifespan:
    """Answer ASGI ``lifespan`` for an app that does not; flush Leza at shutdown.

    Other scopes go to the wrapped app untouched (no per-request cost). At
    ``lifespan.shutdown`` every ``Leza`` built from ``settings.LEZA`` in this
    process is flushed, each bounded by its ``shutdown_timeout``, off the
    event loop.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await answer_lifespan(receive, send, flush_all, on_startup=_seen)


def _seen() -> None:
    global lifespan_seen
    lifespan_seen = True


def flush_all() -> None:
    """Flush every ``Leza`` the Django integration built in this process."""
    from .conf import built

    for leza in built():
        try:
            leza.flush(leza.settings.shutdown_timeout)
        except Exception:
            log.warning("leza: flush at shutdown failed", exc_info=True)


_lifespan_warned = False


def warn_without_lifespan() -> None:
    """Say once when served over ASGI without :class:`~.asgi.LezaLifespan`."""
    global _lifespan_warned
    if lifespan_seen or _lifespan_warned:
        return
    _lifespan_warned = True
    log.warning(
        "leza: this ASGI server ran no lifespan through LezaLifespan, so events queued when "
        "it stops can be lost (uvicorn ends with the signal's default action, skipping "
        "atexit). Serve leza_middleware.django.asgi.get_asgi_application() instead of "
        "django.core.asgi.get_asgi_application() (see docs/django.md)."
    )
