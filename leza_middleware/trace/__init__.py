"""Traceability: one request, one session, one performer, one entity — everything
recorded about it, read together (``leza.trace``; see :mod:`.views`)."""

from .views import Trace

__all__ = ["Trace"]
