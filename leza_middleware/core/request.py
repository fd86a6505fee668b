"""The request core: every step of a request that is the same in every framework.

An adapter (ASGI, WSGI, Django, Flask) translates its native request into
the inputs of :meth:`RequestCore.begin` and the core's decisions back into a
native response. In order, for one request:

1. :meth:`~RequestCore.begin` — timing, the request id (a valid incoming one,
   else the W3C trace id, else a new one), the machine id and session from the
   ``Cookie`` header, whether the request is a logout route and which
   permission its endpoint needs;
2. :meth:`~RequestCore.refused` / :meth:`~RequestCore.arefused` — for a request
   carrying a session: is that session revoked (or unknown)? If so the adapter
   sends :meth:`~RequestCore.revoked_answer` instead of calling the app;
3. :meth:`~RequestCore.decide` — for a protected endpoint, given who asks:
   None to go on, else the refusal to send;
4. when the response starts: :meth:`~RequestCore.adopt_request_id` (the app
   set its own id) and :meth:`~RequestCore.settle` — the cookies to set (a
   new browser's machine id; a session started, rotated or ended);
5. :meth:`~RequestCore.finish` — the outcome (login, logout, denied, a
   permission's reason) and the raw record (``request_path.RAW_FIELDS``),
   queued for the recorder thread.

Every µs here is paid by every request: per-request state is one
:class:`Request` with ``__slots__``, settings are read once at construction,
and no step does I/O, parsing or lookups beyond dicts and sets (a session's
first request may wait for the blocklist to load: ``sessions/blocklist.py``).
No step raises into the app: a failure to record is counted
(``stats()["request_path_errors"]``), never sent to the client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import monotonic, perf_counter, time
from typing import TYPE_CHECKING, Any, Protocol

from ..enrich.cache import bounded_put
from ..ids import parse_incoming_request_id
from ..performer import Performer
from ..request_path import normalise_route
from ..sessions.registry import LOGOUT_REASON, REQUEST_KEY, REVOKED_REASON, UNKNOWN_REASON
from .answers import answer, permission_answer
from .flavour import Flavour
from .hooks import Answer, Faults, Hooks
from .request_state import Request
from .routes import Endpoints, request_paths

if TYPE_CHECKING:
    from ..config import Settings
    from ..permissions import Decision, Permissions
    from ..recorder import Recorder
    from ..sessions.cookies import CookieJar, Keyring
    from ..sessions.registry import Sessions

__all__ = ["CoreParts", "Request", "RequestCore"]  # Request: request_state.py


class CoreParts(Protocol):
    """The parts of a configuration the request core runs on (a ``Leza`` has them)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def recorder(self) -> Recorder: ...
    @property
    def cookies(self) -> CookieJar: ...
    @property
    def sessions(self) -> Sessions: ...
    @property
    def keyring(self) -> Keyring: ...
    @property
    def permissions(self) -> Permissions: ...
    @property
    def hooks(self) -> Hooks: ...
    @property
    def faults(self) -> Faults: ...


_SID_MEMO_SIZE = 8192
_NONE: tuple[()] = ()  # no cookies to set


class RequestCore:
    """The per-request steps for one configuration and one kind of server."""

    def __init__(
        self,
        *,
        settings: Settings,
        offer: Any,
        cookies: CookieJar,
        sessions: Sessions,
        keyring: Keyring,
        permissions: Permissions | None,
        hooks: Hooks,
        faults: Faults,
        asgi: bool,
        state_key: str = REQUEST_KEY,
        framework_sessions: bool = False,
        decide_at_begin: bool = True,
    ) -> None:
        """``framework_sessions``: the framework's own session is the session
        (Django): no ``leza_sid`` cookie is read or set, and an anonymous
        request has none. ``decide_at_begin`` False: :meth:`begin` leaves the
        endpoint permission to the adapter (Flask decides once its hooks ran,
        through :meth:`require`)."""
        self.settings = settings
        self.offer = offer
        self.cookies = cookies
        self.sessions = sessions
        self.keyring = keyring
        self.hooks = hooks
        self.faults = faults
        self.state_key = state_key
        self.framework_sessions = framework_sessions
        self.decide_at_begin = decide_at_begin
        self.flavour = f = Flavour(asgi, settings.request_id_header, settings.record_headers)
        self.endpoints = Endpoints(settings.logout_routes, permissions)
        self.machine_ids = bool(settings.machine_cookie)
        self.track_sessions = settings.sessions and not framework_sessions
        self._blocklist = sessions.blocklist
        self._sids: dict[str, str] = {}  # a framework's session key -> its public id (memo)
        # Hot-path copies: one attribute load each instead of two.
        self._get_keys = (f.request_id, f.traceparent, f.cookie)
        self._request_ids = f.request_ids  # next(self._request_ids[0]): a new id
        self._record_keys = (f.user_agent, f.x_forwarded_for, f.forwarded, f.host)
        # record_headers (privacy/headers.py): None unless configured, one test per request.
        self._pick = f.pick if f.record_keys else None

    @classmethod
    def for_leza(cls, leza: CoreParts, *, asgi: bool, **options: Any) -> RequestCore:
        """The core of a configuration (an adapter's ``Leza``), built from its parts."""
        options.setdefault("permissions", leza.permissions)
        return cls(
            settings=leza.settings,
            offer=leza.recorder.offer,
            cookies=leza.cookies,
            sessions=leza.sessions,
            keyring=leza.keyring,
            hooks=leza.hooks,
            faults=leza.faults,
            asgi=asgi,
            **options,
        )

    # -- 1. begin -------------------------------------------------------------------

    def begin(
        self,
        req: Request,
        holder: Any,
        headers: Any,
        method: str,
        path: str,
        prefix: str,
        query: Any,
        peer: str | None,
        scheme: str,
    ) -> bool:
        """Start ``req``; False when it is to be served unrecorded.

        ``holder``: the mapping the session API's per-request dict is kept in
        (ASGI scope, WSGI environ, Django's ``request.__dict__``); ``headers``:
        the flavour's header mapping, or None when the adapter could not read
        them; ``path``: as the client asked for it; ``prefix``: the part of it
        the app is mounted at; ``method`` ``"WS"`` for a websocket handshake
        (protected as a ``GET``, never a logout).

        Headers that cannot be read cost the request its record (counted), not
        its authorization: a protected endpoint is still decided, on no
        headers (so no cookies: anonymous).
        """
        req.start = perf_counter()
        req.ts = time()
        req.holder = holder
        req.method = method
        req.path = path
        req.query = query
        req.peer = peer
        req.scheme = scheme
        req.status = 0
        req.end = 0.0
        req.error = req.performer = req.action = req.reason = req.granted = req.needed = None
        req.settled = req.logout = False
        f = self.flavour
        ok = True
        try:
            # headers.get(...) each time, not a bound ``get``: no method object
            # made and freed per request (C method calls through LOAD_METHOD).
            k_rid, k_tp, k_cookie = self._get_keys
            incoming = headers.get(k_rid)
            traceparent = headers.get(k_tp)
            rid = None
            if incoming is not None or traceparent is not None:
                rid = f.parse_request_id(incoming, traceparent)
            cookie = headers.get(k_cookie)
            if cookie:
                if not f.asgi:  # CGI: the latin-1 text of the bytes the browser sent
                    cookie = cookie.encode("latin-1", "replace")
                mid, sid, _ = self.cookies.read(cookie)
                if not self.track_sessions:
                    # sessions off, or the framework's (read by its adapter)
                    sid = None
            else:
                mid = sid = None
        except Exception:  # malformed headers: nothing of them is used
            self.faults.request_path_error()
            ok = False
            headers = {}
            rid = mid = sid = None
        req.headers = headers
        req.rid = next(self._request_ids[0]) if rid is None else rid
        req.mid = mid
        req.sid = req.cookie_sid = sid
        endpoints = self.endpoints
        if endpoints.any:
            paths = request_paths(path, prefix)
            if method == "WS":  # a handshake is a GET; a socket is never a logout
                method = "GET"
            else:
                req.logout = endpoints.is_logout(method, paths)
            if self.decide_at_begin:
                req.needed = endpoints.required(method, paths)
        if not ok and req.needed is None:
            return False
        if sid is not None:
            holder[self.state_key] = {"session_id": sid}  # for the session API in the app
        return True

    def detached(self, holder: Any, method: str, path: str, prefix: str) -> Request:
        """A request begun on no headers, only for its endpoint to be decided: one
        the adapter serves unrecorded (its headers could not be read), whose
        framework decides permissions after :meth:`begin` (Django, Flask)."""
        req = Request()
        self.begin(req, holder, {}, method, path, prefix, "", None, "")
        return req

    def framework_session(self, req: Request, key: str) -> None:
        """The request's session is the framework's, named by ``key`` (its cookie's
        value, never stored)."""
        sid = req.sid = req.cookie_sid = self.session_key_id(key)
        req.holder[self.state_key] = {"session_id": sid}  # for the session API in the app

    def session_key_id(self, key: str) -> str:
        """A framework session key's public id: a keyed hash, memoised per key."""
        sid = self._sids.get(key)
        if sid is None:
            sid = self.keyring.session_id(key.encode("latin-1", "replace"))
            bounded_put(self._sids, key, sid, _SID_MEMO_SIZE)
        return sid

    # -- 2. a refused session -------------------------------------------------------

    def refused(self, req: Request) -> bool:
        """Whether ``req``'s session (``req.sid``, not None) is refused: revoked or
        logged out, or unknown while the blocklist cannot be known. May wait
        for the blocklist's first load (async adapters: :meth:`arefused`)."""
        reason = self.sessions.refusal(req.sid)  # type: ignore[arg-type]
        if reason is None:
            return False
        req.action = "denied"
        req.reason = reason
        return True

    async def arefused(self, req: Request) -> bool:
        """:meth:`refused` for async adapters: a load is awaited, never blocking the loop."""
        sid: str = req.sid  # type: ignore[assignment]
        # Sessions.arefusal's fast path inlined: one coroutine per request, not two.
        b = self._blocklist
        if monotonic() < b.fresh_until:
            reason = REVOKED_REASON if sid in b.blocked else None
        else:
            reason = await self.sessions.arefusal(sid)
        if reason is None:
            return False
        req.action = "denied"
        req.reason = reason
        return True

    def revoked_answer(
        self,
        req: Request,
        native: Any,
        sign_out: Callable[[], list[tuple[Any, Any]]] | None = None,
    ) -> Answer:
        """The answer to a refused session: ``revoked_response(native)`` (or the
        JSON 401) with the request id. A revoked session's cookie is cleared
        (and ``sign_out()``'s headers added: the framework's own sign-out
        cookies) so the browser can sign in afresh; an unknown state keeps them."""
        status, headers, body = self.hooks.revoked(native)
        req.status = status
        f = self.flavour
        more: list[tuple[Any, Any]] = []
        if req.reason is REVOKED_REASON:
            try:
                if not self.framework_sessions:
                    more.append((f.set_cookie, f.text(self.cookies.clear_session())))
                if sign_out is not None:
                    more += sign_out()
            except Exception:  # the answer matters more than a cookie
                self.faults.request_path_error()
        return answer(f, status, headers, body, req.rid, more)

    # -- 3. endpoint permissions ----------------------------------------------------

    def decide(self, req: Request, who: Performer | None, native: Any) -> Answer | None:
        """Decide ``req.needed`` for ``who``: None lets the app run, else the refusal.

        When deciding fails (a ``has_permission`` hook raised) the request is
        marked a 500 with that error and the exception propagates: the app is
        not called, and the adapter records the request as it ends.
        """
        try:
            decision = self.endpoints.permissions.decide(req.needed, who, native)  # type: ignore[union-attr,arg-type]
        except BaseException as exc:
            req.status = 500
            req.error = type(exc).__name__
            req.performer = who
            raise
        return self.decided(req, decision, who)

    def decided(self, req: Request, decision: Decision, who: Performer | None) -> Answer | None:
        """Apply a decision taken by the adapter (Django's own ``has_perm``)."""
        if decision.allowed:
            req.granted = decision.reason
            return None
        req.action = "denied"
        req.reason = decision.reason
        req.performer = who
        req.status = decision.status
        req.logout = False  # a refused logout route ends nothing
        return permission_answer(self.flavour, decision.status, decision.reason, req.rid)

    def require(self, req: Request, prefix: str) -> str | None:
        """Look up the permission ``req``'s endpoint needs, for a core that does not
        decide at :meth:`begin` (Flask decides once its ``before_request`` hooks ran)."""
        if self.endpoints.permissions is None:
            return None
        req.needed = self.endpoints.required(req.method, request_paths(req.path, prefix))
        return req.needed

    # -- 4. the response starts -----------------------------------------------------

    def adopt_request_id(self, req: Request, value: Any) -> None:
        """The app set the request-id header itself: that is what the client sees,
        so it is stored, if it is a well-formed id (else ours, not arbitrary text)."""
        try:
            raw = value if self.flavour.asgi else value.encode("latin-1", "replace")
            if parse_incoming_request_id(raw, None) is not None:
                req.rid = value
        except Exception:  # not a header value at all: ours stays
            self.faults.request_path_error()

    def settle(self, req: Request, performer: Performer | None) -> Sequence[tuple[Any, Any]]:
        """Decide the response's cookies, now that the performer is known (once).

        Returns the ``Set-Cookie`` headers to add, in the flavour's type: a new
        browser's machine id (one that keeps cookies, or asks for a page; API
        clients are not handed one per call); a session for a signed-in user
        without one, or one the app just signed in (``leza.sessions.login()``),
        or whose session timed out (not revived); the cookie cleared by a
        logout. Sets ``req.sid`` to the session the request ends up in.
        """
        if req.settled:
            return _NONE
        req.settled = True
        req.performer = performer
        out: Sequence[tuple[Any, Any]] = _NONE
        try:
            f = self.flavour
            state = req.holder.get(self.state_key)
            sid = req.sid
            if state is not None:
                sid = state.get("session_id", sid)
                if state.get("revoked"):  # refused inside the app (a bound session)
                    req.sid = sid
                    return [self._clear_session()] if req.cookie_sid is not None else out
            if req.mid is None and self.machine_ids:
                headers = req.headers
                # find(), not "in": bytes' "in" tries the needle as an int
                # first and clears a TypeError (~150 ns a request).
                if (
                    headers.get(f.cookie) is not None
                    or (headers.get(f.accept) or f.html[:0]).find(f.html) >= 0
                ):
                    req.mid, cookie = self.cookies.new_machine(req.scheme == "https")
                    out = [(f.set_cookie, f.text(cookie))]
            if not self.track_sessions or (state is None and performer is None and not req.logout):
                req.sid = sid
                return out
            ending = req.logout
            if state is not None:
                if state.get("bound"):  # the framework's session carries it (starlette.py)
                    req.sid = state.get("session_id")
                    return out
                if state.get("end_session"):  # leza.sessions.logout()
                    ending = True
                elif state.get("performer") is not None:
                    performer = state["performer"]
            if ending:
                req.sid = sid  # the event carries it: the tracker ends that session
                return [*out, self._clear_session()] if req.cookie_sid is not None else out
            if performer is not None and (
                sid is None
                or (state is not None and state.get("new_session"))
                or sid in self._blocklist.timed_out
            ):
                sid, cookie = self.cookies.new_session(req.scheme == "https")
                out = [*out, (f.set_cookie, f.text(cookie))]
                if state is None:
                    state = req.holder[self.state_key] = {}
                state["session_id"] = sid
            req.sid = sid
        except Exception:  # never let recording hurt the app
            self.faults.request_path_error()
        return out

    def _clear_session(self) -> tuple[Any, Any]:
        f = self.flavour
        return f.set_cookie, f.text(self.cookies.clear_session())

    def wants_machine_id(self, req: Request) -> bool:
        """A browser without a (valid) machine id: it gets one (frameworks that
        set cookies themselves; :meth:`settle` does it for the others). A
        browser keeps cookies, or asks for a page."""
        if req.mid is not None or not self.machine_ids:
            return False
        f = self.flavour
        get = req.headers.get
        return get(f.cookie) is not None or (get(f.accept) or f.html[:0]).find(f.html) >= 0

    def adopt(self, req: Request, session_id: str) -> str:
        """Make ``session_id`` the request's session (no cookie is issued for it):
        a framework's signed session is bound to it (integrations/flask.py)."""
        holder = req.holder
        state = holder.get(self.state_key)
        if state is None:
            state = holder[self.state_key] = {}
        state["session_id"] = session_id
        if req.settled:
            req.sid = session_id
        return session_id

    def ending(self, req: Request) -> bool:
        """The request ends its session: a logout, or a revoked session refused."""
        if req.logout:
            return True
        state = req.holder.get(self.state_key)
        return state is not None and bool(state.get("end_session") or state.get("revoked"))

    # -- 5. finish --------------------------------------------------------------------

    def finish(self, req: Request, route: str | None = None) -> None:
        """Queue ``req``'s raw record; never raises. ``route``: the matched route
        template, any spelling ``normalise_route`` understands."""
        try:
            self.offer(self.record(req, route))
        except Exception:  # never let recording hurt the app
            self.faults.request_path_error()

    def record(self, req: Request, route: str | None = None) -> tuple[Any, ...]:
        """``req``'s raw access record (``request_path.RAW_FIELDS``).

        The action and reason: a refusal's; else what the session API asked
        (``leza.sessions.login()``, ``logout()``, ``login_failed()``), whose
        performer wins; else a logout route's; else an allowed permission's
        reason (below 400); else None, derived from the status on the
        recorder thread.
        """
        status = req.status or 500  # no response started: the server answers 500
        action = req.action
        reason = req.reason
        performer = req.performer
        sid = req.sid
        state = req.holder.get(self.state_key)
        if state is not None and not req.settled:  # the app failed before its response started
            sid = state.get("session_id", sid)
        if action is not None:  # refused: the session, or the endpoint's permission
            ended = reason is REVOKED_REASON or reason is UNKNOWN_REASON
        elif state is not None and "action" in state:
            action, reason = state["action"], state.get("reason")
            performer = state.get("performer") or performer
            ended = bool(state.get("end_session"))
        else:
            ended = req.logout
            if ended:
                action, reason = "logout", LOGOUT_REASON
            elif req.granted is not None and status < 400:
                reason = req.granted
        # A refused or ended session is named, anonymous as the request may be.
        if self.framework_sessions and performer is None and not ended:
            sid = None  # the framework keeps sessions for anonymous visitors too
        headers = req.headers
        k_ua, k_xff, k_fwd, k_host = self._record_keys
        pick = self._pick
        return (
            req.ts,
            (req.end or perf_counter()) - req.start,
            status,
            req.rid,
            req.method,
            req.path,
            req.query,
            req.peer,
            req.scheme,
            None if route is None else normalise_route(route),
            headers.get(k_ua),
            headers.get(k_xff),
            headers.get(k_fwd),
            headers.get(k_host),
            performer,
            req.error,
            action,
            reason,
            req.mid,
            sid,
            None if pick is None else pick(headers, self.flavour.record_keys),
        )
