"""The one renderer behind every mount: a neutral request in, a response out.

The ASGI, WSGI and Django adapters turn their framework's request into a
:class:`DashRequest`, decide ``authorize`` and CSRF their own way, and send
back the :class:`DashResponse` this returns. Routes, under the mount:

* ``GET /<tab>`` — the HTML view of ``audit``, ``access``, ``advisories``,
  ``sessions`` or ``logs`` (``GET /`` redirects to ``/access``);
* ``GET /api/<tab>`` — the same rows as JSON ``{"items": [...], "next_cursor": ...,
  "recorded": ...}`` (see docs/dashboard.md);
* ``GET /api/availability`` — each check's status and its stored probes;
* ``GET /health/live``, ``GET /health/ready`` — liveness and readiness JSON,
  served without ``authorize`` (see availability/health.py);
* ``POST /sessions/revoke`` — the only write: without ``confirm=1`` it answers
  with a confirmation page, with it the session is revoked and the revocation
  recorded in AUDIT (and, through the request itself, in ACCESS).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from ..availability.health import liveness, readiness
from ..context import current_native
from ..errors import LezaError
from ..events import iso_from_us
from ..sessions.registry import _request_state
from .csrf import CsrfToken, DoubleSubmit
from .filters import FilterError, Filters
from .guard import Authorize, check_authorize
from .html import Markup, fmt
from .pages import CSP, MESSAGE_CSP, Chain, Page, confirm_page, message_page, tab_page
from .tabs import TABS_BY_SLUG, read_rows

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["DashRequest", "DashResponse", "Dashboard", "Mount", "note_request"]

log = logging.getLogger("leza_middleware")

_SESSION_ID = re.compile(r"[A-Za-z0-9_\-]{8,128}")
#: Escapes that keep JSON inert if a browser ever sniffs it as HTML.
_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                 0x2028: "\\u2028", 0x2029: "\\u2029"}  # fmt: skip
_SECURITY_HEADERS = [
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "same-origin"),
]
FORBIDDEN_TEXT = "You are not allowed to see this page."
#: How long an audit chain verification is reused by the AUDIT tab.
CHAIN_TTL = 60.0
#: How long the first view of the AUDIT tab waits for the first verification (s).
FIRST_WAIT = 0.03


@dataclass(frozen=True)
class DashRequest:
    method: str  # HEAD is served as GET without a body
    path: str  # inside the mount: "/", "/access", "/api/access", ...
    base: str  # the mount's URL prefix, no trailing slash ("" at the root)
    query: Mapping[str, str]
    csrf: CsrfToken
    form: Mapping[str, str] = field(default_factory=dict)


@dataclass
class DashResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the last value of a name wins)."""
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def parse_query(raw: str) -> dict[str, str]:
    return dict(parse_qsl(raw, keep_blank_values=True))


def parse_cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header: no cookies, hence no valid CSRF token
        return {}
    return {k: m.value for k, m in jar.items()}


def note_request(action: str, reason: str) -> None:
    """Give the running request's access event this action and reason.

    The event is written by whichever Leza middleware records the request
    (the host app's, or the one the dashboard wraps itself in).
    """
    native = current_native()
    state = None if native is None else _request_state(native)
    if state is not None:
        state["action"] = action
        state["reason"] = reason


def _json(data: Any, status: int = 200) -> DashResponse:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return DashResponse(
        status,
        [("Content-Type", "application/json"),
         ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")],
        text.translate(_JSON_ESCAPES).encode("utf-8"),
    )  # fmt: skip


def _html(body: Markup, status: int = 200, csp: str = CSP) -> DashResponse:
    return DashResponse(
        status,
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Security-Policy", csp)],
        body.encode("utf-8"),
    )


def _redirect(location: str) -> DashResponse:
    return DashResponse(303, [("Location", location), ("Content-Type", "text/plain")], b"")


def error_response(status: int, title: str, message: str, api: bool) -> DashResponse:
    if api:
        return _json({"detail": message}, status)
    return _html(message_page(title, message), status, MESSAGE_CSP)


def forbidden(api: bool) -> DashResponse:
    """403 for a viewer ``authorize`` refused: says nothing about the data."""
    return finish(error_response(403, "Forbidden", FORBIDDEN_TEXT, api), None, "GET")


def finish(response: DashResponse, csrf: CsrfToken | None, method: str) -> DashResponse:
    """Security headers on every response; the CSRF cookie when it is new."""
    response.headers.extend(_SECURITY_HEADERS)
    if csrf is not None and csrf.set_cookie is not None:
        response.headers.append(("Set-Cookie", csrf.set_cookie))
    if method == "HEAD":
        response.body = b""
    return response


class ChainCheck:
    """``leza.audit.verify()`` for the AUDIT tab, off the request path.

    Verifying reads and hashes every audit row (~30 µs each): far too slow for a
    page view once the log grows. The tab shows the last result and, when it
    is older than :data:`CHAIN_TTL` seconds (or there is none yet), starts one
    verification in a background thread for the next view.
    """

    def __init__(self, leza: Leza) -> None:
        self._leza = leza
        self._lock = threading.Lock()
        self._result: Chain | None = None
        self._at = 0.0
        self._running: threading.Thread | None = None

    def get(self) -> Chain:
        """The latest result (or "checking" before the first); refreshes it when stale."""
        with self._lock:
            stale = self._result is None or time.monotonic() - self._at >= CHAIN_TTL
            if stale and self._running is None:
                self._running = threading.Thread(
                    target=self.refresh, name="leza-dashboard-verify", daemon=True
                )
                self._running.start()
            result, running = self._result, self._running
        if result is None and running is not None:
            # A short log verifies in a few ms: wait that long for the first result
            # rather than show "not checked"; a long one never holds up the page.
            running.join(FIRST_WAIT)
            with self._lock:
                result = self._result
        if result is None:
            return Chain("unknown", "the chain is being verified; reload in a moment")
        return result

    def refresh(self) -> Chain:
        """Verify now (in the calling thread) and keep the result."""
        checked = iso_from_us(time.time_ns() // 1000)
        try:
            result = self._leza.audit.verify()
            chain = Chain("ok" if result else "broken", result.reason, checked)
        except NotImplementedError:
            chain = Chain("unknown", "this storage keeps no audit chain", checked)
        except Exception as exc:  # a storage error: say so, do not fail the page
            log.warning("leza dashboard: audit verification failed", exc_info=True)
            chain = Chain("unknown", f"could not verify: {type(exc).__name__}", checked)
        with self._lock:
            self._result, self._at = chain, time.monotonic()
            if self._running is threading.current_thread():
                self._running = None
        return chain


class Mount:
    """What every mount of the dashboard holds: its Leza, the ``authorize``
    hook (checked here, at configuration time), the renderer and CSRF."""

    def __init__(self, leza: Leza, authorize: Authorize | None = None) -> None:
        self.leza = leza
        self.authorize = check_authorize(authorize)
        self.dashboard = Dashboard(leza)
        self.csrf = DoubleSubmit(leza.keyring)


class Dashboard:
    """The dashboard of one :class:`~leza_middleware.Leza`; shared by all requests."""

    def __init__(self, leza: Leza) -> None:
        self.leza = leza
        self.chain = ChainCheck(leza)

    def handle(self, req: DashRequest) -> DashResponse:
        """Answer one authorized request (``authorize`` was decided by the adapter)."""
        api = req.path.startswith("/api/")
        try:
            response = self._route(req, api)
        except FilterError as exc:
            response = error_response(400, "Bad request", str(exc), api)
        except LezaError as exc:  # storage unreachable: the viewer is authorized to know
            log.warning("leza dashboard: %s", exc)
            response = error_response(503, "Storage unavailable", str(exc), api)
        return finish(response, req.csrf, req.method)

    def _route(self, req: DashRequest, api: bool) -> DashResponse:
        method = "GET" if req.method == "HEAD" else req.method
        path = req.path.rstrip("/") or "/"
        if path == "/sessions/revoke":
            if method != "POST":
                return error_response(405, "Method not allowed", "Revoke with a POST.", False)
            return self._revoke(req)
        if method != "GET":
            return error_response(405, "Method not allowed", "The dashboard is read-only.", api)
        if path == "/":
            query = urlencode(req.query)
            return _redirect(f"{req.base}/access" + (f"?{query}" if query else ""))
        slug = path[len("/api/") :] if api else path[1:]
        if api and slug == "availability":
            return self._availability(req)
        tab = TABS_BY_SLUG.get(slug)
        if tab is None:
            return error_response(404, "Not found", "No such page in the dashboard.", api)
        filters = Filters.parse(req.query)
        if api:
            rows = read_rows(self.leza, tab, filters)
            # ``recorded``: false for a kind this version does not record yet, so
            # an empty list is not read as "nothing happened".
            return _json(
                {"items": rows.items, "next_cursor": rows.next_cursor, "recorded": rows.available}
            )
        rows = read_rows(self.leza, tab, filters, count=True)
        chain = self.chain.get() if tab.slug == "audit" and rows.available else None
        page = self._page(req)
        return _html(tab_page(page, tab, filters, rows, notice=self._notice(req), chain=chain))

    def _availability(self, req: DashRequest) -> DashResponse:
        """``/api/availability``: each check's status, and its probes with the usual
        filters (``performer`` picks one check by name, ``action=state_change``
        the moments it went down or came back)."""
        filters = Filters.parse(req.query)
        page = self.leza.query.page(
            "check",
            since=filters.since,
            until=filters.until,
            action=filters.action,
            performer_id=filters.performer,
            limit=filters.limit,
            cursor=filters.cursor,
        )
        return _json(
            {
                "status": self.leza.availability.status(),
                "items": page.items,
                "next_cursor": page.next_cursor,
                "recorded": True,
            }
        )

    def health(self, path: str) -> DashResponse | None:
        """``/health/live`` and ``/health/ready``, answered before ``authorize``
        (load balancers do not sign in); None for any other path."""
        path = path.rstrip("/")
        if path == "/health/live":
            status, body = liveness(self.leza)
        elif path == "/health/ready":
            status, body = readiness(self.leza)
        else:
            return None
        return finish(_json(body, status), None, "GET")

    def _page(self, req: DashRequest) -> Page:
        return Page(
            base=req.base,
            app=self.leza.settings.app_name,
            storage=self.leza.storage.describe(),
            now_us=time.time_ns() // 1000,
            csrf_field=req.csrf.field,
            csrf_token=req.csrf.value,
        )

    @staticmethod
    def _notice(req: DashRequest) -> Markup | None:
        revoked = req.query.get("revoked", "")
        if revoked and _SESSION_ID.fullmatch(revoked):
            return fmt('<p class="notice">Session <code>{}</code> was revoked.</p>', revoked)
        gone = req.query.get("gone", "")
        if gone and _SESSION_ID.fullmatch(gone):
            return fmt(
                '<p class="notice warn">Session <code>{}</code> had already ended.</p>', gone
            )
        return None

    def _revoke(self, req: DashRequest) -> DashResponse:
        if not req.csrf.valid:
            note_request("denied", "Dashboard: revoke refused, CSRF token missing or invalid")
            return error_response(403, "Forbidden", "The form expired; reload the page.", False)
        sid = req.form.get("session_id", "")
        if not _SESSION_ID.fullmatch(sid):
            return error_response(400, "Bad request", "No session to revoke.", False)
        # ``back``: the SESSION tab's filters, re-validated, never a location.
        back = ""
        if req.form.get("back"):
            with contextlib.suppress(FilterError):  # a tampered one: back to the default view
                back = Filters.parse(parse_query(req.form["back"])).query()
        leza = self.leza
        session = leza.sessions.get(sid)
        if session is None:
            return error_response(404, "Not found", "No such session.", False)
        if not session.get("active"):
            return _redirect(self._sessions_url(req, back, gone=sid))
        if req.form.get("confirm") != "1":
            return _html(confirm_page(self._page(req), session, back))
        revoked = leza.sessions.revoke(sid)
        if revoked:
            leza.audit.record(
                action="revoke",
                entity_type="session",
                entity_id=sid,
                before={"active": True, "end_reason": None},
                after={"active": False, "end_reason": "revoked"},
                reason="Revoked from the Leza dashboard",
            )
            note_request("revoke", f"Revoked session {sid} from the Leza dashboard")
        if revoked:
            return _redirect(self._sessions_url(req, back, revoked=sid))
        return _redirect(self._sessions_url(req, back, gone=sid))

    @staticmethod
    def _sessions_url(req: DashRequest, back: str, **notice: str) -> str:
        return f"{req.base}/sessions?" + "&".join(x for x in (back, urlencode(notice)) if x)
