"""``leza.audit``: record who changed what, read an entity's history, verify the chain."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..context import current_native, current_request_id
from ..enrich.access import stored_performer
from ..enrich.text import clean, clean_lines
from ..errors import LezaError
from ..events import AuditEvent
from ..ids import new_event_id
from ..performer import Performer, coerce_performer, performer_from_user
from ..sessions.registry import REQUEST_ATTR, REQUEST_KEY
from ..storage.base import QueryFilter
from ..storage.capabilities import Capability, require
from .chain import Chain
from .diff import diff, plain
from .purge import plan_purge
from .verify import VerifyResult, verify_chains

if TYPE_CHECKING:
    from ..core.hooks import Hooks
    from ..enrich.clientip import ProxyTrust
    from ..events import Event
    from ..ready import ReadyStorage
    from ..redact import Redactor
    from ..sessions.cookies import Keyring

__all__ = ["Audit"]

log = logging.getLogger("leza_middleware")

_MAX_NAME = 512  # characters of an action, entity type or entity id
# Where _hook_once keeps the hook's answer: the ASGI scope / WSGI environ, or
# an attribute of the Django request.
_HOOK_KEY = "leza.hook_performer"
_HOOK_ATTR = "_leza_hook_performer"


class Audit:
    """``leza.audit``: the parts it uses, not the Leza.

    ``record`` queues an event (the recorder's ``offer``); ``storage`` is the
    read side's set-up gate; ``hooks`` and ``proxies`` find the running
    request's performer and client IP; the chain is keyed from ``keyring``.
    """

    def __init__(
        self,
        *,
        app_name: str,
        keyring: Keyring,
        redactor: Redactor,
        record: Callable[[Event], None],
        storage: ReadyStorage,
        hooks: Hooks,
        proxies: ProxyTrust,
    ) -> None:
        self.app_name = app_name
        self._keyring = keyring
        self._redactor = redactor
        self._record = record
        self._storage = storage
        self._hooks = hooks
        self._proxies = proxies
        self.key = keyring.subkey(b"audit")
        self.chain = Chain(self.key)

    def masks(self, name: str) -> bool:
        """True when a field's values are stored as ``[Filtered]`` (leza_middleware.redact's rules,
        with ``audit_mask`` and ``redact_query_keys``)."""
        return self._redactor.is_secret_field(name)

    def after_fork(self) -> None:
        self.chain.after_fork()

    # -- writing ------------------------------------------------------------------

    def record(
        self,
        *,
        action: str,
        entity_type: str,
        entity_id: Any,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        actor: Performer | Mapping[str, Any] | None = None,
        reason: str | None = None,
        diff_: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Record one change of one entity; returns the (queued) event.

        ``actor`` defaults to the performer of the running request; the request
        id and client IP are taken from it too. ``before``/``after`` are the
        entity's states (either may be None: a create, a delete); the
        field-level diff is computed from them. ``diff_`` adds changes no state
        shows (many-to-many links, bulk updates). Secret values are filtered on
        the recorder thread, before the row is chained
        (:meth:`Privacy.prepare_audit`): a changed password still shows as
        changed, ``[Filtered]`` on both sides.
        """
        if not action or not entity_type:
            raise ValueError("an audit record needs an action and an entity_type")
        who = coerce_performer(actor) if actor is not None else self.current_performer()
        if who is not None:
            who = stored_performer(who)[0]  # cleaned as on access events (ids index, JSON)
        state_before = plain(before)
        state_after = plain(after)
        # Diffed on the real values (masked later): a changed password must show
        # as changed even though both sides are stored as "[Filtered]".
        changes: dict[str, Any] = diff(state_before, state_after)
        if diff_:
            changes.update(plain(diff_) or {})
        now = time.time_ns() // 1000
        event = AuditEvent(
            id=new_event_id(now),
            ts=now,
            # Names and ids are looked up and shown in one line: no control
            # characters (PostgreSQL refuses NUL in text), nothing unencodable.
            action=clean(str(action), _MAX_NAME),
            entity_type=clean(str(entity_type), _MAX_NAME),
            entity_id=clean(str(entity_id), _MAX_NAME),
            actor=who,
            before=state_before,
            after=state_after,
            diff=changes,
            reason=None if reason is None else clean_lines(str(reason)),
            request_id=current_request_id(),
            client_ip=self.current_client_ip(),
            app=self.app_name,
            session_id=_current_session_id(),
        )
        self._record(event)
        return event

    def watch(self, target: Any, models: Iterable[Any] | None = None) -> Any:
        """Record every ORM change made through a SQLAlchemy / SQLModel session,
        session factory or engine (``audit/sqlalchemy.py``)."""
        from .sqlalchemy import watch

        return watch(self, target, models)

    def link(self, events: Iterable[AuditEvent]) -> None:
        """Chain audit events in the order they are written (recorder thread)."""
        self.chain.link(list(events))

    # -- reading ------------------------------------------------------------------

    def history(
        self, entity_type: str, entity_id: Any, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Every change of one entity, oldest first.

        Bulk statements are recorded once under entity id ``"*"``; those whose
        ``statement.ids`` names this entity are part of its history too.
        """
        key = str(entity_id)
        storage = self._storage.ready()
        own = storage.query("audit", QueryFilter(entity_type=str(entity_type), entity_id=key,
                                                 limit=limit)).events  # fmt: skip
        bulk = storage.query("audit", QueryFilter(entity_type=str(entity_type), entity_id="*",
                                                  limit=limit)).events  # fmt: skip
        touched = [e for e in bulk if key in _statement_ids(e)]
        events = sorted([*own, *touched], key=lambda e: (e.ts, e.id))
        return [e.to_dict() for e in events[-limit:]]

    def checkpoints(self) -> list[dict[str, Any]]:
        """The last (seq, hash) of every chain: keep a copy elsewhere to prove no tail
        was cut later (pass it back to :meth:`verify`). Needs the storage's
        ``audit_chain`` capability (StorageCapabilityError otherwise)."""
        require(self._storage.storage, Capability.AUDIT_CHAIN, "cannot export audit checkpoints")
        return self._storage.ready().audit_checkpoints()

    def verify(self, checkpoints: Iterable[Mapping[str, Any]] | None = None) -> VerifyResult:
        """Check every chain; truthy when intact, else ``.reason`` names the first break.

        Raises :class:`~leza_middleware.errors.StorageCapabilityError` before
        reading anything when the storage does not declare ``audit_chain``."""
        require(self._storage.storage, Capability.AUDIT_CHAIN)
        storage = self._storage.ready()
        stored = storage.audit_checkpoints()
        marks = list(stored) + list(checkpoints or ())
        return verify_chains(
            storage.iter_audit(),
            marks,
            self.key,
            storage.audit_purge_marks(),
            storage.audit_redactions(),  # erasure's signed entries (privacy/forget.py)
        )

    def purge_batches(self, before: int, batch_size: int = 10_000) -> Iterator[int]:
        """Delete audit rows older than ``before`` (µs) chain by chain, leaving signed
        purge markers so :meth:`verify` still passes (``audit/purge.py``).

        Yields the count of each deleted batch. Raises :class:`LezaError` without a
        configured secret key (the markers are signed with it) and when the log
        does not verify now: purging would erase the evidence; and
        StorageCapabilityError when the storage does not declare ``audit_chain``
        and ``audit_purge``.
        """
        require(self._storage.storage, Capability.AUDIT_CHAIN, "cannot purge audit rows")
        require(self._storage.storage, Capability.AUDIT_PURGE)
        if self._keyring.ephemeral:
            raise LezaError(
                "purging audit rows needs the secret key the app writes with "
                "(secret_key / LEZA_SECRET_KEY): the purge markers are signed with it"
            )
        result = self.verify()
        if not result:
            raise LezaError(
                f"the audit log does not verify ({result.reason}); purging now would erase "
                "the evidence: investigate with `leza verify` first"
            )
        storage = self._storage.ready()
        marks = plan_purge(
            storage.iter_audit(),
            storage.audit_purge_marks(),
            before,
            self.key,
            time.time_ns() // 1000,
        )
        if marks:
            yield from storage.purge_audit_chains(marks, batch_size)

    # -- the running request -------------------------------------------------------

    def current_performer(self) -> Performer | None:
        """Who is making the running request (None outside one, or anonymous)."""
        native = current_native()
        if native is None:
            return None
        hooked = self._hooks.performer_hook is not None
        try:
            if isinstance(native, dict):
                if native.get("type") in ("http", "websocket"):  # an ASGI scope
                    state = native.get("leza.session") or {}
                    if state.get("performer") is not None:
                        return state["performer"]  # type: ignore[no-any-return]
                    if hooked:
                        from starlette.requests import HTTPConnection

                        return self._hook_once(native, HTTPConnection(native))
                    user = native.get("user")
                    return None if user is None else performer_from_user(user)
                found = native.get("leza.performer")  # a WSGI environ (Flask sets it)
                if found is not None:
                    return coerce_performer(found)
                if hooked:
                    return self._hook_once(native, native)
                return _flask_performer()
            if hooked:
                return self._hook_once(native, native)
            return performer_from_user(getattr(native, "user", None))  # Django
        except Exception:
            log.debug("leza: no performer for an audit record", exc_info=True)
            return None

    def _hook_once(self, native: Any, request: Any) -> Performer | None:
        """The performer hook's answer, asked once per request and kept in the
        request (the hook may query a database; a request may write many log
        lines). Only a performer is kept: an anonymous answer is asked again,
        so a sign-in during the request is seen by what is recorded after it."""
        if isinstance(native, dict):
            cached = native.get(_HOOK_KEY)
        else:
            cached = getattr(native, _HOOK_ATTR, None)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        found = self._hooks.performer(request)
        if found is not None:
            if isinstance(native, dict):
                native[_HOOK_KEY] = found
            else:
                setattr(native, _HOOK_ATTR, found)
        return found

    def current_client_ip(self) -> str | None:
        native = current_native()
        if native is None:
            return None
        try:
            if isinstance(native, dict) and native.get("type") in ("http", "websocket"):
                headers = dict(native.get("headers") or ())
                client = native.get("client")
                peer = client[0] if client else None
                xff, fwd = headers.get(b"x-forwarded-for"), headers.get(b"forwarded")
                xff = None if xff is None else xff.decode("latin-1")
                fwd = None if fwd is None else fwd.decode("latin-1")
            else:
                meta = native if isinstance(native, dict) else native.META
                peer = meta.get("REMOTE_ADDR")
                xff, fwd = meta.get("HTTP_X_FORWARDED_FOR"), meta.get("HTTP_FORWARDED")
            return self._proxies.resolve(peer, xff, fwd).client_ip or None
        except Exception:
            return None


def _current_session_id() -> str | None:
    """The public id of the running request's session (what its access event
    carries), read without creating the request's session state."""
    native = current_native()
    if native is None:
        return None
    try:
        if isinstance(native, dict):  # an ASGI scope or a WSGI environ
            state = native.get(REQUEST_KEY)
        else:  # a Django request
            state = getattr(native, REQUEST_ATTR, None)
        sid = state.get("session_id") if isinstance(state, dict) else None
        return sid if isinstance(sid, str) and sid else None
    except Exception:
        return None


def _flask_performer() -> Performer | None:
    try:
        from flask import g, has_request_context
    except ImportError:
        return None
    if not has_request_context():
        return None
    user = getattr(g, "user", None)
    if user is None:
        try:
            from flask_login import current_user  # type: ignore[import-untyped]

            user = current_user
        except ImportError:
            return None
    return (
        coerce_performer(user)
        if isinstance(user, (Performer, Mapping))
        else performer_from_user(user)
    )


def _statement_ids(event: AuditEvent) -> list[str]:
    statement = (event.diff or {}).get("statement")
    ids = statement.get("ids") if isinstance(statement, Mapping) else None
    return [str(i) for i in ids] if isinstance(ids, list) else []
