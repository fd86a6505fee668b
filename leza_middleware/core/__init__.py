"""The request core: the steps of a request, written once for every framework.

Adapters (``integrations/asgi.py``, ``integrations/wsgi.py``,
``django/middleware.py``, and Flask through the WSGI one) only translate: their
native request into :meth:`RequestCore.begin`'s inputs, the core's decisions
into a native response. See ``request.py`` for the order of the steps.

* ``request.py``  — :class:`RequestCore`: begin, refusals, permissions,
  cookies, the outcome and the raw record;
* ``request_state.py`` — :class:`Request`, one request's state;
* ``flavour.py``  — how ASGI and CGI (WSGI environ, Django META) spell headers;
* ``routes.py``   — logout routes and protected endpoints, on mounted paths too;
* ``answers.py``  — what a refused request is answered with;
* ``hooks.py``    — the app's performer hook and ``revoked_response``, guarded,
  and the request path's failure counters;
* ``binding.py``  — a session bound into a framework's signed-cookie session.
"""

from __future__ import annotations

from .hooks import Faults, Hooks
from .request import RequestCore
from .request_state import Request

__all__ = ["Faults", "Hooks", "Request", "RequestCore"]
