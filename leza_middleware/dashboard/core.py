"""The one renderer behind every mount: a neutral request in, a response out.

The ASGI, WSGI and Django adapters turn their framework's request into a
:class:`DashRequest` (see :mod:`.mount` for the first two), decide
``authorize`` their own way, and send back the response this returns.
Routes, under the mount:

* ``GET /state`` and ``GET /api/state`` — STATE, the landing page (``GET /``
  redirects to it): traffic, endpoints, who is on, services, the recorder,
  the latest advisories (:mod:`.state_view`);
* ``GET /<tab>`` — the HTML view of ``audit``, ``access``, ``advisories``,
  ``sessions`` or ``logs``;
* ``GET /api/<tab>`` — the same rows as JSON ``{"items": [...], "next_cursor": ...,
  "recorded": ...}`` (see docs/dashboard.md);
* ``GET /api/availability`` — each check's status and its stored probes;
* ``GET /health/live``, ``GET /health/ready`` — liveness and readiness JSON,
  served without ``authorize`` (see availability/health.py);
* ``GET /requests/<id>``, ``/sessions/<id>``, ``/performers/<id>``,
  ``/audit/<type>/<id>``, ``/records/<id>`` and their ``/api/…`` twins — the
  traceability views (:mod:`.trace_routes`);
* ``POST /sessions/revoke`` — without ``confirm=1`` it answers with a
  confirmation page, with it the session is revoked and the revocation
  recorded in AUDIT (and, through the request itself, in ACCESS);
* ``POST /sessions/revoke-all`` — the same for every active session of one
  performer (their view's REVOKE ALL SESSIONS).

Every input is parsed strictly (:mod:`.inputs`): a bad one is a 400 naming
the field. Every POST route is an *action* (:attr:`Dashboard.actions`) and
reaches its handler only through the CSRF checks (:mod:`.csrf`), so an action
added later is protected by construction. An unexpected error is a logged 500
that shows nothing of it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ..availability.health import liveness, readiness
from ..context import current_native
from ..errors import LezaError
from ..events import iso_from_us
from ..sessions.registry import request_state
from ..storage.capabilities import Capability, missing_sentence
from .csrf import CsrfToken
from .filters import NAMES, Filters
from .html import Markup, fmt
from .inputs import EMPTY, BadInput, Params, performer_id, session_id
from .links import performer_url, session_url
from .pages import Chain, Page, confirm_page, tab_page
from .responses import (
    INTERNAL_TEXT,
    DashResponse,
    bad_input,
    error_response,
    finish,
    html_response,
    json_response,
    redirect,
)
from .state_view import answer_state
from .tabs import TABS_BY_SLUG, read_rows
from .trace_pages import revoke_all_confirm_page
from .trace_routes import answer_trace

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["SAFE_METHODS", "DashRequest", "Dashboard", "note_request"]

log = logging.getLogger("leza_middleware")

#: Methods that change nothing; every other one is an action, CSRF-checked.
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: How long an audit chain verification is reused by the AUDIT tab.
CHAIN_TTL = 60.0
#: How long the first view of the AUDIT tab waits for the first verification (s).
FIRST_WAIT = 0.03
#: The longest ``back`` (the SESSION tab's filters, carried through a revoke).
MAX_BACK = 2048
_SESSION_STATES = ("", "active", "ended")
#: Where a revoke form returns: the SESSION tab, the session's view, its performer's.
_RETURN_VIEWS = ("", "session", "performer")
#: A query string passed on by the ``/`` redirect as it is: visible ASCII only.
_PLAIN_QUERY = re.compile(rb"[\x21-\x7e]{0,2048}")


@dataclass(frozen=True)
class DashRequest:
    method: str  # HEAD is served as GET without a body
    path: str  # inside the mount: "/", "/access", "/api/access", ...
    base: str  # the mount's URL prefix, no trailing slash ("" at the root)
    query: Params
    csrf: CsrfToken
    form: Params = EMPTY
    #: Why this request comes from another site (:func:`.csrf.foreign_origin`);
    #: None when it does not. Only consulted for actions.
    foreign: str | None = None
    raw_query: bytes = field(default=b"", repr=False)


def note_request(action: str, reason: str) -> None:
    """Give the running request's access event this action and reason.

    The event is written by whichever Leza middleware records the request
    (the host app's, or the one the dashboard wraps itself in).
    """
    native = current_native()
    state = None if native is None else request_state(native)
    if state is not None:
        state["action"] = action
        state["reason"] = reason


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
        storage = self._leza.storage
        try:
            if not storage.supports(Capability.AUDIT_CHAIN):
                why = missing_sentence(storage, Capability.AUDIT_CHAIN)
                chain = Chain("unknown", why, checked)
            else:
                result = self._leza.audit.verify()
                chain = Chain("ok" if result else "broken", result.reason, checked)
        except Exception as exc:  # a storage error: say so, do not fail the page
            log.warning("leza dashboard: audit verification failed", exc_info=True)
            chain = Chain("unknown", f"could not verify: {type(exc).__name__}", checked)
        with self._lock:
            self._result, self._at = chain, time.monotonic()
            if self._running is threading.current_thread():
                self._running = None
        return chain


class Dashboard:
    """The dashboard of one :class:`~leza_middleware.Leza`; shared by all requests."""

    def __init__(self, leza: Leza) -> None:
        self.leza = leza
        self.chain = ChainCheck(leza)
        #: The state-changing routes (POST): reached only through :meth:`_refused`.
        self.actions: dict[str, Callable[[DashRequest], DashResponse]] = {
            "/sessions/revoke": self._revoke,
            "/sessions/revoke-all": self._revoke_all,
        }

    def handle(self, req: DashRequest) -> DashResponse:
        """Answer one authorized request (``authorize`` was decided by the adapter)."""
        api = req.path.startswith("/api/")
        try:
            response = self._route(req, api)
        except BadInput as exc:
            response = bad_input(exc, api)
        except LezaError as exc:  # storage unreachable: the viewer is authorized to know
            log.warning("leza dashboard: %s", exc)
            response = error_response(503, "Storage unavailable", str(exc), api)
        except Exception:
            log.exception("leza dashboard: unexpected error answering %s %r", req.method, req.path)
            response = error_response(500, "Server error", INTERNAL_TEXT, api)
        return finish(response, req.csrf, req.method)

    def _route(self, req: DashRequest, api: bool) -> DashResponse:
        method = "GET" if req.method == "HEAD" else req.method
        path = req.path.rstrip("/") or "/"
        action = self.actions.get(path)
        if action is not None:
            if method != "POST":
                return error_response(405, "Method not allowed", "Use a POST.", api)
            return self._refused(req, path, api) or action(req)
        if method != "GET":
            return error_response(405, "Method not allowed", "The dashboard is read-only.", api)
        if path == "/":
            query = req.raw_query if _PLAIN_QUERY.fullmatch(req.raw_query) else b""
            return redirect(f"{req.base}/state" + (f"?{query.decode()}" if query else ""))
        traced = answer_trace(self, req, path, api)
        if traced is not None:
            return traced
        slug = path[len("/api/") :] if api else path[1:]
        if slug == "state":
            return answer_state(self, req, api)
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
            return json_response(
                {"items": rows.items, "next_cursor": rows.next_cursor, "recorded": rows.available}
            )
        notice = self._notice(req)
        rows = read_rows(self.leza, tab, filters, count=True)
        chain = self.chain.get() if tab.slug == "audit" and rows.available else None
        page = self.page(req)
        return html_response(tab_page(page, tab, filters, rows, notice=notice, chain=chain))

    @staticmethod
    def _refused(req: DashRequest, path: str, api: bool) -> DashResponse | None:
        """403 for an action from another site or without a valid CSRF token;
        None when it may go ahead. Refusals are recorded as ``denied``."""
        problem = req.foreign or req.csrf.problem
        if problem is None:
            return None
        note_request("denied", f"Dashboard: {req.method} {path} refused: {problem}"[:300])
        if req.foreign is not None:
            message = "This request came from another site, so it was refused."
        else:
            message = "The form expired or belongs to another sign-in; reload the page."
        return error_response(403, "Forbidden", message, api)

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
        return json_response(
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
        leza = self.leza
        if path == "/health/live":
            status, body = liveness(leza.settings.app_name, leza.recorder)
        elif path == "/health/ready":
            status, body = readiness(
                leza.settings.app_name, leza.recorder, leza.availability.monitor
            )
        else:
            return None
        return finish(json_response(body, status), None, "GET")

    def page(self, req: DashRequest) -> Page:
        """What every page of this request shares (mount prefix, CSRF token, now)."""
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
        revoked = req.query.get("revoked")
        if revoked:
            return fmt(
                '<p class="notice">Session <code>{}</code> was revoked.</p>',
                session_id("revoked", revoked),
            )
        gone = req.query.get("gone")
        if gone:
            return fmt(
                '<p class="notice warn">Session <code>{}</code> had already ended.</p>',
                session_id("gone", gone),
            )
        return None

    @staticmethod
    def _back(text: str) -> str:
        """``back``: the SESSION tab's filters as a query string, re-validated and
        re-written; never a location (``//evil``, ``https:`` … are refused)."""
        if not text:
            return ""
        if len(text) > MAX_BACK:
            raise BadInput("back", f"back: at most {MAX_BACK} characters")
        params = Params.parse(text.encode("utf-8"))
        unknown = params.names() - NAMES
        if unknown:
            raise BadInput("back", "back: only the SESSION tab's filters, as a query string")
        try:
            filters = Filters.parse(params)
        except BadInput as exc:
            raise BadInput("back", f"back: {exc}") from None
        if filters.action not in _SESSION_STATES:
            raise BadInput("back", "back: action is the session's state, active or ended")
        return filters.query()

    def _revoke(self, req: DashRequest) -> DashResponse:
        form = req.form
        sid = session_id("session_id", form.get("session_id"))
        back = self._back(form.get("back"))
        confirm = form.get("confirm")
        if confirm not in ("", "1"):
            raise BadInput("confirm", "confirm: 1 to revoke, empty to be asked first")
        view = form.get("view")
        if view not in _RETURN_VIEWS:
            raise BadInput("view", "view: empty (the SESSION tab), session or performer")
        leza = self.leza
        session = leza.sessions.get(sid)
        if session is None:
            return error_response(404, "Not found", "No such session.", False)

        def back_to(**notice: str) -> DashResponse:
            return redirect(self._return_url(req, back, view, session, notice))

        if not session.get("active"):
            return back_to(gone=sid)
        if confirm != "1":
            cancel = self._return_url(req, back, view, session, {})
            return html_response(confirm_page(self.page(req), session, back, view, cancel))
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
            return back_to(revoked=sid)
        return back_to(gone=sid)

    @staticmethod
    def _sessions_url(req: DashRequest, back: str, **notice: str) -> str:
        return f"{req.base}/sessions?" + "&".join(x for x in (back, urlencode(notice)) if x)

    def _return_url(
        self,
        req: DashRequest,
        back: str,
        view: str,
        session: dict[str, Any],
        notice: dict[str, str],
    ) -> str:
        """Where a revoke returns: the SESSION tab with ``back``'s filters, or the
        session's own view, or its performer's (taken from the stored session,
        never from the form)."""
        query = urlencode(notice)
        tail = f"?{query}" if query else ""
        pid = str((session.get("performer") or {}).get("id") or "")
        if view == "performer" and pid:
            try:
                return performer_url(req.base, performer_id("performer_id", pid)) + tail
            except BadInput:
                pass  # an id no URL can carry: the session's view instead
        if view in ("session", "performer"):
            return session_url(req.base, str(session.get("_id"))) + tail
        return self._sessions_url(req, back, **notice)

    def _revoke_all(self, req: DashRequest) -> DashResponse:
        """REVOKE ALL SESSIONS of one performer (their view): asks first, then
        revokes every active session, audits it and returns to the view."""
        form = req.form
        pid = performer_id("performer_id", form.get("performer_id"))
        confirm = form.get("confirm")
        if confirm not in ("", "1"):
            raise BadInput("confirm", "confirm: 1 to revoke, empty to be asked first")
        leza = self.leza
        active = leza.sessions.active(performer_id=pid, limit=10_000)
        view = performer_url(req.base, pid)
        if not active:
            return redirect(f"{view}?revoked_all=0")
        if confirm != "1":
            performer = active[0].get("performer") or {"id": pid}
            return html_response(revoke_all_confirm_page(self.page(req), performer, len(active)))
        n = leza.sessions.revoke_all(pid)
        if n:
            leza.audit.record(
                action="revoke_all",
                entity_type="performer",
                entity_id=pid,
                before={"active_sessions": n},
                after={"active_sessions": 0},
                reason=f"Revoked every session ({n}) from the Leza dashboard",
            )
            note = f"Revoked {n} session(s) of {pid} from the Leza dashboard"
            note_request("revoke", note[:300])
        return redirect(f"{view}?revoked_all={n}")
