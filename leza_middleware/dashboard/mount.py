"""What the ASGI and WSGI mounts share: everything after ``authorize``.

An adapter reads its server's request into an :class:`Incoming` (raw bytes and
a few headers, nothing interpreted) and hands it to :meth:`Mount.respond`,
which parses the inputs (:mod:`.inputs`), decides CSRF (:mod:`.csrf`) and asks
the renderer. Django's mount builds its :class:`~.core.DashRequest` itself
(Django's CSRF check instead of the signed token) from the same parts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .core import SAFE_METHODS, Dashboard, DashRequest
from .csrf import FIELD, SignedCsrf, foreign_origin, origin_rules
from .guard import Authorize, check_authorize
from .inputs import EMPTY, BadInput, Params
from .responses import DashResponse, internal_error

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["ORIGIN_HEADERS", "Incoming", "Mount"]

log = logging.getLogger("leza_middleware")

#: The request headers :func:`.csrf.foreign_origin` reads (plus ``host``).
ORIGIN_HEADERS = ("origin", "referer", "sec-fetch-site", "host")


@dataclass(frozen=True)
class Incoming:
    """One authorized request as the server handed it over."""

    method: str
    path: str  # inside the mount
    base: str  # the mount's prefix, no trailing slash
    query: bytes  # the raw query string
    body: bytes  # the raw form body (empty unless POST)
    cookie: str  # the Cookie header
    headers: Mapping[str, str]  # ORIGIN_HEADERS that were sent, lower-case names
    scheme: str
    identity: str  # who the admin is (guard.admin_identity), "" when unknown


class Mount:
    """What every ASGI/WSGI mount of the dashboard holds: its Leza, the
    ``authorize`` hook and trusted origins (checked here, at configuration
    time), the renderer and the CSRF keys."""

    def __init__(
        self,
        leza: Leza,
        authorize: Authorize | None = None,
        *,
        trusted_origins: Iterable[str] | None = None,
    ) -> None:
        self.leza = leza
        self.authorize = check_authorize(authorize)
        self.trusted = origin_rules(trusted_origins, "trusted_origins")
        self.dashboard = Dashboard(leza)
        self.csrf = SignedCsrf(leza.keyring)

    def respond(self, incoming: Incoming) -> DashResponse:
        """The answer to one authorized request; never raises (a 500 instead)."""
        try:
            return self.dashboard.handle(self.request(incoming))
        except Exception:
            log.exception("leza dashboard: unexpected error answering %s", incoming.method)
            return internal_error(incoming.path.startswith("/api/"))

    def request(self, incoming: Incoming) -> DashRequest:
        form = Params.parse(incoming.body) if incoming.body else EMPTY
        try:
            sent = form.get(FIELD)
        except BadInput:  # twice, or not text: no token
            sent = ""
        csrf = self.csrf.token(
            incoming.cookie,
            sent,
            incoming.identity,
            path=incoming.base or "/",
            secure=incoming.scheme == "https",
        )
        headers = incoming.headers
        foreign = None
        if incoming.method not in SAFE_METHODS:
            foreign = foreign_origin(headers, headers.get("host"), incoming.scheme, self.trusted)
        return DashRequest(
            method=incoming.method,
            path=incoming.path or "/",
            base=incoming.base,
            query=Params.parse(incoming.query),
            csrf=csrf,
            form=form,
            foreign=foreign,
            raw_query=incoming.query,
        )
