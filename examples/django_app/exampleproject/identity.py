"""The example's performer hook: who made a request.

A real project would read ``request.user`` (the default without a hook) or its
own token. To keep the example free of a database, the "user" comes from the
``X-Demo-User`` and ``X-Demo-Role`` headers, or from the session ``/login/`` starts.
"""

from __future__ import annotations

from django.http import HttpRequest

from leza_middleware import Performer


def performer(request: HttpRequest) -> Performer | None:
    name = request.headers.get("X-Demo-User")
    session = getattr(request, "session", None)
    if not name and session is not None:
        name = session.get("demo_user")
    if not name:
        return None
    return Performer(
        id=f"demo-{name}",
        name=name.title(),
        email=f"{name}@example.com",
        role_name=request.headers.get("X-Demo-Role", "viewer"),
    )
