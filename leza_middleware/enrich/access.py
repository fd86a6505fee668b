"""Turn a :class:`RawAccess` into an :class:`AccessEvent` (recorder thread only).

Everything the request path deferred happens here: header picking, client IP
through the proxy chain, User-Agent → device, IP → geo, query redaction,
control-character stripping and size caps, outcome and reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from ..events import AccessEvent
from ..ids import new_event_id
from ..request_path import RawAccess
from .clientip import ProxyTrust
from .geo import GeoResolver
from .text import clean, redact_query
from .useragent import UserAgentParser

__all__ = ["AccessEnricher", "derive_outcome"]

MAX_PATH = 2048
MAX_HOST = 255
_FORWARD_HEADERS = (b"user-agent", b"x-forwarded-for", b"forwarded", b"host")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"


def derive_outcome(status: int, error: str | None) -> tuple[str, str, str]:
    """(action, outcome, reason) from the status, until a permission decision exists."""
    if error is not None or status >= 500:
        detail = f" ({error})" if error else ""
        return "access", "error", f"Server error: {status} {_phrase(status)}{detail}"
    if status in (401, 403):
        return "denied", "denied", f"Access denied: {status} {_phrase(status)}"
    if status >= 400:
        return "access", "failure", f"Request failed: {status} {_phrase(status)}"
    return "access", "success", f"Request completed: {status} {_phrase(status)}"


def _pick_asgi(headers: Any) -> tuple[str, str | None, str | None, str]:
    ua = ""
    xff: list[str] = []
    fwd: list[str] = []
    host = ""
    for name, value in headers:
        if name == b"user-agent":
            ua = value.decode("latin-1")
        elif name == b"x-forwarded-for":
            xff.append(value.decode("latin-1"))
        elif name == b"forwarded":
            fwd.append(value.decode("latin-1"))
        elif name == b"host":
            host = value.decode("latin-1")
    return ua, ",".join(xff) if xff else None, ",".join(fwd) if fwd else None, host


def _pick_wsgi(environ: Mapping[str, Any]) -> tuple[str, str | None, str | None, str]:
    return (
        environ.get("HTTP_USER_AGENT") or "",
        environ.get("HTTP_X_FORWARDED_FOR"),
        environ.get("HTTP_FORWARDED"),
        environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "",
    )


class AccessEnricher:
    def __init__(
        self,
        *,
        user_agents: UserAgentParser,
        geo: GeoResolver,
        proxies: ProxyTrust,
        redact_keys: frozenset[str],
        app_name: str,
    ) -> None:
        self.user_agents = user_agents
        self.geo = geo
        self.proxies = proxies
        self.redact_keys = redact_keys
        self.app_name = app_name

    def __call__(self, raw: RawAccess) -> AccessEvent:
        headers = raw.headers
        if isinstance(headers, Mapping):
            ua, xff, fwd, host = _pick_wsgi(headers)
        else:
            ua, xff, fwd, host = _pick_asgi(headers)

        peer = raw.peer
        if isinstance(peer, (tuple, list)):
            peer = peer[0] if peer else None
        addr = self.proxies.resolve(peer if isinstance(peer, str) else None, xff, fwd)
        geo = self.geo.lookup(addr.client_ip) if addr.ip_valid else None

        status = raw.status
        action, outcome, reason = derive_outcome(status, raw.error)
        if raw.action is not None:
            action = raw.action
        if raw.reason is not None:
            reason = raw.reason

        endpoint = clean(raw.path, MAX_PATH)
        query = raw.query
        if query:
            endpoint = clean(
                f"{endpoint}?{redact_query(query, self.redact_keys)}", MAX_PATH
            )
        ts = int(raw.ts * 1_000_000)
        return AccessEvent(
            id=new_event_id(ts),
            ts=ts,
            action=action,
            method=clean(raw.method, 16),
            endpoint=endpoint,
            route=None if raw.route is None else clean(raw.route, MAX_PATH),
            status=status,
            duration_us=int(raw.duration * 1_000_000),
            outcome=outcome,
            reason=clean(reason, 512),
            request_id=raw.request_id,
            client_ip=addr.client_ip,
            ip_valid=addr.ip_valid,
            peer_ip=addr.peer_ip,
            proxy_chain=addr.chain,
            scheme=clean(raw.scheme, 16),
            host=clean(host, MAX_HOST),
            app=self.app_name,
            device=self.user_agents.parse(ua),
            geo=geo,
            performer=raw.performer,
        )
