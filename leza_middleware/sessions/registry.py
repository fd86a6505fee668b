"""User sessions: ``leza.sessions``.

A session is one signed-in user in one browser, from the first request that
carries their identity until logout, a timeout or revocation. Three parts:

* the **tracker** (recorder thread) turns access events into session changes:
  a start the first time this process sees a session, a ``last_seen`` at most
  every ``session_seen_interval`` seconds, an end on logout. Storage folds the
  changes of every process into one record per session;
* the **blocklist** (request path) is an in-memory set of ended sessions whose
  next request is refused — revoked and logged-out ones, and timed-out ones
  when ``enforce_session_timeouts`` is on. It is loaded from storage before
  the process decides its first request carrying a session cookie, then the
  recorder thread refreshes it every ``session_poll_interval`` seconds, so a
  revocation in one process reaches every other within that bound, with no
  storage query per request; when it cannot be known the request is refused
  (``revocation_unknown``; see blocklist.py);
* the **API**: ``active()``, ``find()``, ``get()``, ``revoke()``, ``revoke_all()``, and
  ``login()`` / ``logout()`` / ``login_failed()`` for code that signs users in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..context import current_native
from ..events import AccessEvent, Event, SessionEvent, SessionRecord
from ..ids import new_event_id
from ..performer import Performer, coerce_performer
from ..storage.base import QueryFilter
from .blocklist import BLOCK_REASONS, REVOKED_REASON, UNKNOWN_REASON, Blocklist

if TYPE_CHECKING:
    from ..config import Settings
    from ..ready import ReadyStorage

__all__ = ["LOGIN_REASON", "LOGOUT_REASON", "REVOKED_REASON", "UNKNOWN_REASON", "Sessions"]

log = logging.getLogger("leza_middleware")

LOGOUT_REASON = "User has the permission to logout"
LOGIN_REASON = "User logged in"
#: Where an adapter finds what the session API asked of the running request:
#: this key of an ASGI scope or WSGI environ, or this attribute of a request object.
REQUEST_KEY = "leza.session"
REQUEST_ATTR = "_leza_session"

# Sessions timed out per poll and kind at most (the rest at the next poll).
_EXPIRE_PAGE = 5_000


def _now_us() -> int:
    return time.time_ns() // 1000


class Sessions:
    """``leza.sessions``: built from the settings and the storage (its set-up gate)."""

    def __init__(self, settings: Settings, storage: ReadyStorage) -> None:
        s = settings
        self._storage = storage
        self.app_name = s.app_name
        self.idle_timeout = s.idle_timeout
        self.absolute_timeout = s.absolute_timeout
        self.seen_interval_us = int(s.session_seen_interval * 1_000_000)
        self.poll_interval = s.session_poll_interval
        self.enforce_timeouts = s.enforce_session_timeouts
        self.revocation_memory = max(s.revocation_memory, s.absolute_timeout + 60)
        self.blocklist = Blocklist(
            s, storage.storage, enabled=s.sessions, memory=self.revocation_memory
        )
        self._reset()

    def _reset(self) -> None:
        self._seen: dict[str, int] = {}  # session id -> last time this process wrote it
        self._polled_at = 0.0

    def after_fork(self) -> None:
        self.blocklist.after_fork()
        self._reset()

    @property
    def blocked(self) -> set[str]:
        """Session ids whose requests are refused (decide with :meth:`refusal`)."""
        return self.blocklist.blocked

    @property
    def timed_out(self) -> set[str]:
        """Sessions that timed out without enforcement: a signed-in request that
        still carries one starts a new session instead of reviving it."""
        return self.blocklist.timed_out

    # -- the request path ---------------------------------------------------------

    def refusal(self, sid: str) -> str | None:
        """Why a request of session ``sid`` is refused, or None to serve it.

        The one decision every adapter takes for a request carrying a session
        cookie: :data:`REVOKED_REASON` for a revoked or logged-out session,
        :data:`UNKNOWN_REASON` when the blocklist cannot be known and
        ``revocation_unknown`` is "refuse". While the blocklist is current this
        is a clock comparison and a set lookup; the first request of a process
        (and of a forked child) waits for the blocklist to load, at most
        ``revocation_load_timeout`` seconds. Async code calls :meth:`arefusal`.
        """
        b = self.blocklist
        if monotonic() < b.fresh_until:
            return REVOKED_REASON if sid in b.blocked else None
        return b.decide(sid)

    async def arefusal(self, sid: str) -> str | None:
        """:meth:`refusal` for async adapters: a load is awaited, never blocking the loop."""
        b = self.blocklist
        if monotonic() < b.fresh_until:
            return REVOKED_REASON if sid in b.blocked else None
        return await b.adecide(sid)

    def prefetch(self) -> None:
        """Start loading the blocklist now (ASGI lifespan startup), without waiting."""
        self.blocklist.prefetch()

    # -- read API --------------------------------------------------------------

    def active(self, performer_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Sessions that have not ended, newest first (as DESIGN.md's session record)."""
        flt = QueryFilter(active=True, performer_id=performer_id, limit=limit)
        return [r.to_dict() for r in self._records(flt)]

    def find(
        self, performer_id: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Sessions, active and ended, newest first."""
        flt = QueryFilter(active=active, performer_id=performer_id, limit=limit)
        return [r.to_dict() for r in self._records(flt)]

    def get(self, session_id: str) -> dict[str, Any] | None:
        records = self._records(QueryFilter(session_id=session_id, limit=1))
        return records[0].to_dict() if records else None

    def _records(self, flt: QueryFilter) -> list[SessionRecord]:
        records: list[SessionRecord] = self._storage.ready().query("session", flt).events
        return records

    # -- revocation ------------------------------------------------------------

    def revoke(self, session_id: str) -> bool:
        """End a session now; its next request in any process gets 401.

        ``session_id`` is the session's public ``_id`` (from :meth:`active`).
        Returns False when no such active session exists. The end is written
        to storage before this returns; other processes pick it up within
        ``session_poll_interval`` seconds.
        """
        record = self._records(QueryFilter(session_id=session_id, limit=1))
        if not record or not record[0].active:
            return False
        self._end([session_id], "revoked")
        return True

    def revoke_all(self, performer_id: str, except_current: bool = False) -> int:
        """Revoke every active session of one user; return how many.

        With ``except_current=True`` (inside a request) the session making the
        request is kept — "sign out everywhere else".
        """
        keep = self.current_id() if except_current else None
        ids = [
            r.id
            for r in self._records(
                QueryFilter(active=True, performer_id=performer_id, limit=10_000)
            )
            if r.id != keep
        ]
        if ids:
            self._end(ids, "revoked")
        return len(ids)

    def _end(self, session_ids: Sequence[str], reason: str) -> None:
        now = _now_us()
        changes: list[Event] = [
            SessionEvent(
                id=new_event_id(now),
                ts=now,
                action="session_end",
                session_id=sid,
                app=self.app_name,
                end_reason=reason,
            )
            for sid in session_ids
        ]
        self._storage.ready().write(changes)  # synchronously: revocation must be durable
        self.blocklist.add(session_ids, block=reason in BLOCK_REASONS)

    # -- the running request (login / logout) ------------------------------------

    def _mark(self, **changes: Any) -> bool:
        native = current_native()
        if native is None:
            return False
        state = request_state(native)
        if state is None:
            return False
        state.update(changes)
        return True

    def current_id(self) -> str | None:
        """The session id of the running request, if it has one."""
        native = current_native()
        state = None if native is None else request_state(native)
        return None if state is None else state.get("session_id")

    def login(self, performer: Performer | dict[str, Any] | None = None) -> None:
        """Record the running request as a login (action ``login``) by ``performer``.

        Frameworks' own login signals call this; call it yourself where your
        code signs a user in. A new session starts for the browser.
        """
        self._mark(
            action="login",
            reason=LOGIN_REASON,
            performer=coerce_performer(performer),
            new_session=True,
        )

    def logout(
        self, reason: str = LOGOUT_REASON, performer: Performer | dict[str, Any] | None = None
    ) -> None:
        """Record the running request as a logout; its session ends.

        ``performer``: who logged out, when the request no longer knows (the
        framework has already signed them out).
        """
        changes: dict[str, Any] = {"action": "logout", "reason": reason, "end_session": True}
        if performer is not None:
            changes["performer"] = coerce_performer(performer)
        self._mark(**changes)

    def login_failed(self, reason: str = "Login failed", username: str | None = None) -> None:
        """Record the running request as a failed login attempt."""
        detail = f"{reason} for {username!r}" if username else reason
        self._mark(action="login_failed", reason=detail)

    # -- the tracker (recorder thread) ------------------------------------------

    def changes_for(self, events: Sequence[Event]) -> list[Event]:
        """Session changes implied by a batch of access events."""
        out: list[Event] = []
        seen = self._seen
        interval = self.seen_interval_us
        for e in events:
            if type(e) is not AccessEvent:
                continue
            sid = e.row[23]  # session_hash
            if sid is None:
                continue
            ts = e.row[1]
            action = e.row[2]
            last = seen.get(sid)
            if last is None and e.performer is not None and action != "logout":
                seen[sid] = ts
                out.append(
                    SessionEvent(
                        id=new_event_id(ts),
                        ts=ts,
                        action="session_start",
                        session_id=sid,
                        app=e.row[17],
                        performer=e.performer,
                        device=e.device,
                        geo=e.geo,
                        ip=e.row[11],
                        machine_id=e.row[22],
                    )
                )
            elif last is not None and ts - last >= interval:
                seen[sid] = ts
                out.append(
                    SessionEvent(
                        id=new_event_id(ts),
                        ts=ts,
                        action="session_seen",
                        session_id=sid,
                        app=e.row[17],
                    )
                )
            if action == "logout":
                seen.pop(sid, None)
                out.append(
                    SessionEvent(
                        id=new_event_id(ts + 1),
                        ts=ts,
                        action="session_end",
                        session_id=sid,
                        app=e.row[17],
                        end_reason="logout",
                    )
                )
                self.blocklist.add((sid,), block=True)
        if len(seen) > 100_000:  # bounded: forgetting only means one extra start row
            seen.clear()
        return out

    def poll(self, force: bool = False) -> None:
        """Refresh the blocklist from storage and end timed-out sessions.

        Called by the recorder thread every ``session_poll_interval`` seconds.
        """
        now = time.monotonic()
        if not force and now - self._polled_at < self.poll_interval:
            return
        self._polled_at = now
        # The blocklist first: a failure to end timed-out sessions (a write)
        # must not keep revocations from reaching this process.
        self.blocklist.refresh()
        self._expire()

    def _expire(self) -> None:
        # Only the sessions that are due, not every active one: an app with many
        # signed-in users would read them all at every poll (and, past the page
        # size, never see the oldest). What is left over goes at the next poll.
        now = _now_us()
        query = self._storage.storage.query
        started_before = now - int(self.absolute_timeout * 1_000_000)
        too_old = query(
            "session", QueryFilter(active=True, until=started_before - 1, limit=_EXPIRE_PAGE)
        ).events
        idle_before = now - int(self.idle_timeout * 1_000_000)
        idle = query(
            "session", QueryFilter(active=True, seen_until=idle_before - 1, limit=_EXPIRE_PAGE)
        ).events
        ended: set[str] = set()
        for reason, records in (("absolute_timeout", too_old), ("idle_timeout", idle)):
            ids = [r.id for r in records if r.id not in ended]
            if ids:
                self._end(ids, reason)
                ended.update(ids)
                for sid in ids:
                    self._seen.pop(sid, None)


def request_state(native: Any) -> dict[str, Any] | None:
    """The per-request dict the session API writes into (ASGI scope, environ, request)."""
    if isinstance(native, dict):  # ASGI scope or WSGI environ
        state = native.get(REQUEST_KEY)
        if state is None:
            state = native[REQUEST_KEY] = {}
        return state
    try:
        state = getattr(native, REQUEST_ATTR, None)
        if state is None:
            state = {}
            setattr(native, REQUEST_ATTR, state)
        return state
    except Exception:
        return None


SessionHook = Callable[[Any], str | None]
