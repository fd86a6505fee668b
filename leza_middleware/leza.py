"""``Leza``: the one object an app configures and reads from.

It holds the settings and, once first used, the parts built from them
(:mod:`.assembly`); adapters, the dashboard and the command line read those
parts from it. Nothing is built until something is used, so a Flask app's
config given to :meth:`Leza.init_app` is part of the configuration the parts
are built from, the way django-cors-headers reads its settings lazily.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .assembly import Inputs, Parts, build, open_inputs
from .config import Settings
from .core.hooks import Faults
from .errors import LezaConfigError
from .logs import LezaLogHandler
from .notify import Notify
from .performer import Performer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .advisories import AdvisoryEngine
    from .audit.api import Audit
    from .availability import Availability
    from .core.hooks import Hooks
    from .enrich.access import AccessEnricher
    from .enrich.clientip import ProxyTrust
    from .enrich.geo import GeoResolver
    from .enrich.useragent import UserAgentParser
    from .events import Event
    from .metrics import LezaMetrics
    from .permissions import Permissions
    from .pipeline import Pipeline
    from .privacy import ForgetReport, Privacy
    from .query import Query
    from .recorder import Recorder
    from .redact import Redactor
    from .sessions.cookies import CookieJar, Keyring
    from .sessions.registry import Sessions
    from .storage import Storage
    from .trace import Trace

__all__ = ["Leza"]

T = TypeVar("T")


class _Part(Generic[T]):
    """A part of the configuration, built with all the others on first access.

    A non-data descriptor: the build stores every part in the instance's
    ``__dict__``, so later reads are plain attribute reads.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, leza: None, owner: type) -> _Part[T]: ...
    @overload
    def __get__(self, leza: Leza, owner: type) -> T: ...
    def __get__(self, leza: Leza | None, owner: type) -> _Part[T] | T:
        if leza is None:
            return self
        leza._build()
        return vars(leza)[self.name]  # type: ignore[no-any-return]


class Leza:
    """Configuration, recorder and read API of one app.

    Every argument may be left out and read from ``LEZA_<NAME>`` environment
    variables instead (``LEZA_STORAGE``, ``LEZA_GEOIP_DB``,
    ``LEZA_TRUSTED_PROXIES`` comma-separated, ``LEZA_SECRET_KEY``,
    ``LEZA_APP_NAME``, ``LEZA_BATCH_SIZE``, ``LEZA_FLUSH_INTERVAL``,
    ``LEZA_QUEUE_SIZE``, ``LEZA_SPILL_DIR``, ``LEZA_SHUTDOWN_TIMEOUT``, …).
    Invalid values raise :class:`~leza_middleware.LezaConfigError` here.
    The parts (storage, recorder, sessions, …) are built at first use;
    nothing connects to storage until the first event is written.
    """

    storage: _Part[Storage] = _Part()
    proxies: _Part[ProxyTrust] = _Part()
    geo: _Part[GeoResolver] = _Part()
    user_agents: _Part[UserAgentParser] = _Part()
    keyring: _Part[Keyring] = _Part()
    redactor: _Part[Redactor] = _Part()
    hooks: _Part[Hooks] = _Part()
    privacy: _Part[Privacy] = _Part()
    enricher: _Part[AccessEnricher] = _Part()
    cookies: _Part[CookieJar] = _Part()
    sessions: _Part[Sessions] = _Part()
    audit: _Part[Audit] = _Part()
    advisories: _Part[AdvisoryEngine | None] = _Part()
    permissions: _Part[Permissions] = _Part()
    pipeline: _Part[Pipeline] = _Part()
    recorder: _Part[Recorder] = _Part()
    query: _Part[Query] = _Part()
    trace: _Part[Trace] = _Part()
    availability: _Part[Availability] = _Part()

    def __init__(
        self,
        storage: str | Storage | None = None,
        geoip_db: str | os.PathLike[str] | bool | None = None,
        trusted_proxies: Iterable[str] | str | None = None,
        performer: Callable[[Any], Performer | dict[str, Any] | None] | None = None,
        secret_key: str | None = None,
        app_name: str | None = None,
        **options: Any,
    ) -> None:
        given = {
            "storage": storage,
            "geoip_db": geoip_db,
            "trusted_proxies": trusted_proxies,
            "performer": performer,
            "secret_key": secret_key,
            "app_name": app_name,
            **options,
        }
        # Kept so init_app() can layer a Flask app's config under what the code said.
        self._given = {name: value for name, value in given.items() if value is not None}
        self._lock = threading.RLock()
        self._built = False
        # Failures on the request path, and the notifiers: neither depends on the settings.
        self.faults = Faults()
        self.notify = Notify()
        self._log_handlers: list[LezaLogHandler] = []
        self.settings = Settings.resolve(self._given)
        self._inputs: Inputs = open_inputs(self.settings)

    @property
    def performer_hook(self) -> Callable[[Any], Any] | None:
        """The ``performer`` setting: the app's hook finding who makes a request."""
        return self.settings.performer

    # -- configuration ---------------------------------------------------------

    def _build(self) -> None:
        """Build every part from the settings, once (the first use of any part)."""
        if self._built:
            return
        with self._lock:
            if self._built:
                return
            parts = build(self.settings, self._inputs, faults=self.faults, notify=self.notify)
            vars(self).update({name: getattr(parts, name) for name in Parts.__dataclass_fields__})
            self._built = True

    def _layer(self, overrides: Mapping[str, Any], source: str) -> None:
        """Resolve the settings again with ``overrides`` beneath the explicit arguments.

        For ``Leza(); leza.init_app(app)``, the Flask pattern: the Leza exists
        (configured from the environment) before the app's config is known.
        Precedence is constructor argument > ``overrides`` > ``LEZA_*``
        environment > default. Every value is checked before anything changes;
        then the new settings are taken only while nothing is built: a Leza in
        use keeps its parts (one Leza's events never split across two storages).
        """
        settings = Settings.resolve({**overrides, **self._given})
        if settings == self.settings:
            return
        inputs = open_inputs(settings, (self.settings, self._inputs))
        with self._lock:
            if self._built:
                if inputs.storage is not self._inputs.storage:
                    inputs.storage.close()  # opened for the check above only
                used = (
                    "has already recorded events"
                    if self.recorder.stats()["enqueued"]
                    else "is already in use (its parts were built by a first use)"
                )
                raise LezaConfigError(
                    f"{source} configures this Leza differently from how it was built, but it "
                    f"{used}; configure it before it serves requests, or build one Leza per app"
                )
            if inputs.storage is not self._inputs.storage:
                self._inputs.storage.close()  # never set up: this only drops its engine
            self.settings, self._inputs = settings, inputs

    # -- recording -------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Queue an already-built event (used by the session, audit and log APIs)."""
        self.recorder.offer(event)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Block until everything queued so far is written (or spilled); False on timeout."""
        if not self._built:
            return True  # nothing was ever queued
        return self.recorder.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop the availability monitor, flush and stop the recorder, then send
        the notifications still queued; called at interpreter exit too."""
        done = True
        if self._built:
            self.availability.stop(timeout=1.0 if timeout is None else min(timeout, 1.0))
            done = self.recorder.shutdown(timeout)
        self.notify.shutdown(timeout)
        return done

    def stats(self) -> dict[str, Any]:
        """Counters: enqueued, written, dropped (+ by reason), retried, spilled, replayed, …

        ``enqueued == written + dropped + pending + spilled`` holds at all times.
        """
        out = self.recorder.stats()
        out["request_path_errors"] = self.faults.request_path_errors
        out["performer_hook_errors"] = self.faults.performer_hook_errors
        out["geo"] = self.geo.stats()
        out["user_agents"] = self.user_agents.cache_info()
        out["notify"] = self.notify.stats()
        out["logs"] = _sum_stats(h.stats() for h in self._log_handlers)
        out["advisories"] = None if self.advisories is None else self.advisories.stats()
        # The blocklist of ended sessions: loaded or not, requests decided without it.
        out["revocations"] = self.sessions.blocklist.stats()
        monitor = self.availability.monitor
        out["availability"] = {
            "checks": len(monitor.checks()),
            "leader": monitor.is_leader,
            "probes": monitor.probes,
            "errors": monitor.errors,
        }
        return out

    def _prepare_batch(self, items: list[Any]) -> list[Event]:
        """The recorder's preparation of a batch (benchmarks time it on its own)."""
        return self.pipeline.prepare_batch(items)

    # -- other read and write APIs ---------------------------------------------

    def logging_handler(
        self, level: int | str = logging.NOTSET, *, rate: float = 500.0, burst: int = 2000
    ) -> LezaLogHandler:
        """A ``logging.Handler`` recording the app's log records (the LOG tab).

        ``logging.getLogger().addHandler(leza.logging_handler())``. At most
        ``rate`` records per second (bursts of ``burst``); see :mod:`.logs`.
        """
        handler = LezaLogHandler(
            self.recorder,
            self.audit.current_performer,
            self.settings.app_name,
            level,
            rate=rate,
            burst=burst,
        )
        self._log_handlers.append(handler)
        return handler

    def metrics(self, registry: CollectorRegistry | None = None, **options: Any) -> LezaMetrics:
        """Prometheus metrics of this app, fed from the recorder thread.

        Registers request counts and latencies, check states and the
        recorder's counters into ``registry`` (default: prometheus_client's
        global ``REGISTRY``) and returns the :class:`~leza_middleware.metrics.LezaMetrics`
        (the same one when called again). Needs the ``[prometheus]`` extra;
        serve them with :func:`leza_middleware.metrics.make_asgi_app` (or
        ``make_wsgi_app``, ``make_django_view``). See docs/metrics.md.
        """
        from .metrics import register

        return register(self, registry, **options)

    def forget(self, performer_id: str, *, identifiers: Iterable[str] = ()) -> ForgetReport:
        """Erase what is recorded about one person (``leza forget --performer ID``).

        Their access events, advisories, log records (theirs and those written
        in their requests) and identity rows are deleted; their sessions are
        revoked when active and kept anonymous (the ended row is how other
        processes learn of the revocation); other rows whose text mentions
        them (their id, email or name, and ``identifiers`` such as a user name)
        have it replaced with ``[Forgotten]``. Audit rows are redacted, not
        deleted, under signed redaction entries, so ``audit.verify()`` still
        passes (docs/privacy.md). Needs ``secret_key`` when audit rows are
        affected. Events recorded after this call are not affected.
        """
        return self.privacy.forget(performer_id, identifiers=identifiers)

    # -- frameworks ----------------------------------------------------------

    def init_app(self, app: Any) -> None:
        """Flask: record every request of ``app`` — ``leza.init_app(app)``.

        Reads ``app.config["LEZA_*"]`` (under this Leza's explicit arguments,
        over the environment) into the settings its parts are built from,
        wraps ``app.wsgi_app`` with :class:`~leza_middleware.LezaWSGIMiddleware`
        and takes the performer from Flask-Login or ``flask.g.user``. Call it
        before the Leza is used: once its parts are built (its first request,
        or a read such as ``leza.storage``), an app config that changes its
        settings is a :class:`~leza_middleware.LezaConfigError`. See
        :mod:`leza_middleware.integrations.flask`.
        """
        from .integrations.flask import attach, config_settings, needs_attaching

        if not needs_attaching(self, app):
            return  # init_app twice: already set up
        overrides = config_settings(app.config)
        if overrides:
            self._layer(overrides, source=f"app.config of Flask app {app.name!r}")
        attach(self, app)

    def __repr__(self) -> str:
        return f"<Leza app={self.settings.app_name!r} storage={self._inputs.storage.describe()}>"


def _sum_stats(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The log handlers' counters added up."""
    out: dict[str, Any] = {"recorded": 0, "dropped": {}}
    for part in parts:
        out["recorded"] += part["recorded"]
        for reason, n in part["dropped"].items():
            out["dropped"][reason] = out["dropped"].get(reason, 0) + n
    return out
