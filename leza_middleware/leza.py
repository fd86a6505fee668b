"""``Leza``: the one object an app configures; adapters and the read side share it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .advisories import AdvisoryEngine, default_rules
from .advisories.rules import ALARM_RULES
from .audit.api import Audit
from .availability import Availability
from .config import Settings
from .core.hooks import Faults, Hooks
from .enrich.access import AccessEnricher
from .enrich.clientip import ProxyTrust
from .enrich.geo import GeoResolver
from .enrich.useragent import UserAgentParser
from .errors import LezaConfigError
from .events import SEVERITIES, AdvisoryEvent, AuditEvent, CheckEvent, Event, LogEvent
from .logs import LezaLogHandler
from .notify import Notification, Notify
from .performer import Performer
from .permissions import Permissions
from .privacy import ForgetReport, Privacy, check_retention
from .query import Query
from .recorder import Recorder
from .redact import Redactor
from .request_path import is_priority
from .sessions.cookies import CookieJar, Keyring
from .sessions.registry import Sessions
from .spill import Spill, default_spill_dir
from .storage import Capability, Storage, is_sql, open_storage
from .trace import Trace

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .metrics import LezaMetrics

__all__ = ["Leza"]

log = logging.getLogger("leza_middleware")
# Seconds between rollup upkeeps (storage.settle_traffic) on the recorder thread.
_SETTLE_INTERVAL = 60.0


class Leza:
    """Configuration, recorder and read API of one app.

    Every argument may be left out and read from ``LEZA_<NAME>`` environment
    variables instead (``LEZA_STORAGE``, ``LEZA_GEOIP_DB``,
    ``LEZA_TRUSTED_PROXIES`` comma-separated, ``LEZA_SECRET_KEY``,
    ``LEZA_APP_NAME``, ``LEZA_BATCH_SIZE``, ``LEZA_FLUSH_INTERVAL``,
    ``LEZA_QUEUE_SIZE``, ``LEZA_SPILL_DIR``, ``LEZA_SHUTDOWN_TIMEOUT``, …).
    Invalid values raise :class:`~leza_middleware.LezaConfigError` here.
    Nothing connects to storage until the first event is written.
    """

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
        # Kept so init_app() can layer a Flask app's config under what the code
        # said explicitly (see _reconfigure).
        self._given = {name: value for name, value in given.items() if value is not None}
        # Failures on the request path, counted across init_app() rebuilds.
        self.faults = Faults()
        self._log_handlers: list[LezaLogHandler] = []
        self._configure(Settings.resolve(self._given))

    def _configure(self, settings: Settings) -> None:
        """Build storage, enrichment and the recorder from validated settings.

        What can still fail (storage URL, proxy list, GeoIP file) is built
        before anything is assigned, so a rebuild that raises (init_app with a
        bad app.config) leaves the Leza as it was.
        """
        storage = open_storage(settings.storage)
        check_retention(settings.retention, storage)  # a purge it cannot do fails here
        if settings.migrate and is_sql(storage):
            storage.auto_migrate = True  # applied by its first setup(): first write or read
        proxies = ProxyTrust(settings.trusted_proxies)
        geo = settings.geoip_db
        previous: Settings | None = getattr(self, "settings", None)
        resolver: GeoResolver
        if previous is not None and previous.geoip_db == geo:
            resolver = self.geo  # a rebuild: keep the open database (and warn only once)
        else:
            resolver = GeoResolver.disabled() if geo is False else GeoResolver.open(geo)
        self.settings = settings
        self.performer_hook = settings.performer
        # The app's request-time callables, guarded (core/hooks.py).
        self.hooks = Hooks(settings.performer, settings.revoked_response, self.faults)
        self.storage: Storage = storage
        self.proxies = proxies
        self.geo: GeoResolver = resolver
        self.user_agents = UserAgentParser()
        self.keyring = Keyring(settings.secret_key)
        # Secret names (leza_middleware.redact's list plus the deployment's), for everything stored.
        self.redactor = Redactor([*settings.redact_query_keys, *settings.audit_mask])
        # IP anonymisation (keyed with secret_key), retention, erasure.
        self.privacy = Privacy(self)
        self.enricher = AccessEnricher(
            user_agents=self.user_agents,
            geo=self.geo,
            proxies=self.proxies,
            redactor=self.redactor,
            app_name=settings.app_name,
            anonymize_ip=self.privacy.access_anonymizer(),
        )
        # Warned about once the app serves requests with it (see _tick), not
        # here: init_app() may still bring the key from the app's config.
        self._next_settle = 0.0
        self._warn_ephemeral_key = self.keyring.ephemeral and bool(
            settings.machine_cookie
            or settings.sessions
            or any(mode == "hash" for _, mode in settings.anonymize_ip)
        )
        self.cookies = CookieJar(
            self.keyring,
            machine_cookie=settings.machine_cookie,
            machine_max_age=settings.machine_cookie_max_age,
            session_cookie=settings.session_cookie,
        )
        self.cookies.refill()  # machine ids ready before the first request
        self.sessions = Sessions(self)
        self.audit = Audit(self)
        # Notifiers do not depend on the settings: kept across an init_app() rebuild.
        self.notify: Notify = getattr(self, "notify", None) or Notify()
        self.advisories: AdvisoryEngine | None = None
        if settings.advisories:
            rules = settings.advisory_rules
            self.advisories = AdvisoryEngine(
                list(default_rules() if rules is None else rules),
                self.storage,
                app_name=settings.app_name,
            )
        self.permissions = Permissions(
            settings.permissions, settings.app_name, settings.has_permission
        )
        spill_dir = settings.spill_dir or default_spill_dir(self.storage.describe())
        previous_recorder: Recorder | None = getattr(self, "recorder", None)
        self.recorder = Recorder(
            self.storage,
            self._prepare,
            Spill(spill_dir),
            prepare_batch=self._prepare_batch,
            priority=self._priority,
            derive=self._derive if settings.sessions or self.advisories is not None else None,
            tick=self._tick,
            on_fork=(
                self.sessions.after_fork,
                self.cookies.after_fork,
                self.audit.after_fork,
                self._availability_after_fork,
                self.privacy.after_fork,
            ),
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            queue_size=settings.queue_size,
            max_retries=settings.max_retries,
            shutdown_timeout=settings.shutdown_timeout,
        )
        if previous_recorder is not None:  # an init_app() rebuild: metrics keep their feed
            for observer in previous_recorder.observers:
                self.recorder.add_observer(observer)
        self.query = Query(self.storage)
        self.trace = Trace(self)  # the traceability views' reads
        previous_availability: Availability | None = getattr(self, "availability", None)
        self.availability = Availability(self)
        if previous_availability is not None:  # an init_app() rebuild: carry the checks over
            previous_availability.stop(timeout=1.0)
            for check in previous_availability.checks:
                self.availability.add(check)
            for window in previous_availability.monitor.maintenance():
                self.availability.monitor.add_maintenance(window)
        self.query.live = self  # STATE: this recorder's counters, this monitor's checks

    # -- recorder ------------------------------------------------------------

    def _prepare(self, item: Any) -> Event:
        if type(item) is tuple:  # a raw access record from an adapter
            return self.enricher(item)
        if isinstance(item, AuditEvent):
            self.privacy.prepare_audit(item)  # before the chain hash covers its IP
            self.audit.link([item])  # chained in the order it is written
            return item
        if type(item) is LogEvent:
            # An app that logs a URL or a header dict would store its secrets.
            scrub = self.redactor.scrub_text
            item.message = scrub(item.message)
            if item.exception:
                item.exception = scrub(item.exception)
            return item
        if type(item) is CheckEvent and item.error:
            item.error = self.redactor.scrub_text(item.error)  # an error can quote a URL
            return item
        if isinstance(item, Event):
            return item
        raise TypeError(f"cannot record {type(item).__name__}")

    def _derive(self, events: list[Event]) -> list[Event]:
        """On the recorder thread, per batch: session changes, then advisories."""
        derived: list[Event] = (
            list(self.sessions.changes_for(events)) if self.settings.sessions else []
        )
        privacy = self.privacy
        if derived and privacy.anonymizers:
            privacy.derived(derived)  # the session kind's mode, on top of the access one
        engine = self.advisories
        if engine is not None:
            # The recorded events only: each login already has its access event,
            # so its derived session_start would be a second sighting of it.
            found = engine.process(events)
            if found:
                self._scrub_advisories(found)
                if privacy.anonymizers:
                    privacy.derived(found)  # before the notifiers see them too
                derived.extend(found)
                self._notify_advisories(found)
        return derived

    def _scrub_advisories(self, found: list[AdvisoryEvent]) -> None:
        """A rule's message and details are text it wrote, perhaps quoting what it
        saw: filtered like everything else stored (before the notifiers see them)."""
        redactor = self.redactor
        for advisory in found:
            advisory.message = redactor.scrub_text(advisory.message)
            advisory.details = redactor.mask(advisory.details, ambiguous=False)

    def _notify_advisories(self, found: list[AdvisoryEvent]) -> None:
        """Send the advisories at or above ``advisory_notify`` to the notifiers.

        Not those restating a check's state change (``service_down``,
        ``service_recovered``): the monitor sent that transition's own
        ``down`` / ``recovered`` alarm, and a pager rings once per outage.
        """
        threshold = self.settings.advisory_notify
        if threshold is None:
            return
        floor = SEVERITIES.index(threshold)
        for advisory in found:
            if SEVERITIES.index(advisory.severity) < floor or advisory.rule in ALARM_RULES:
                continue
            self.notify.notify(
                Notification(
                    event="advisory",
                    check=None,
                    state=None,
                    at=datetime.fromtimestamp(advisory.ts / 1_000_000, tz=timezone.utc),
                    message=advisory.message,
                    severity=advisory.severity,
                    details={
                        "advisory_id": advisory.id,
                        "rule": advisory.rule,
                        "evidence": list(advisory.evidence),
                        "performer_id": advisory.performer_id,
                        "ip": advisory.ip,
                        "app": advisory.app,
                    },
                )
            )

    def _availability_after_fork(self) -> None:
        self.availability.monitor.after_fork()

    def logging_handler(
        self, level: int | str = logging.NOTSET, *, rate: float = 500.0, burst: int = 2000
    ) -> LezaLogHandler:
        """A ``logging.Handler`` recording the app's log records (the LOG tab).

        ``logging.getLogger().addHandler(leza.logging_handler())``. At most
        ``rate`` records per second (bursts of ``burst``); see :mod:`.logs`.
        """
        handler = LezaLogHandler(self, level, rate=rate, burst=burst)
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

    def _tick(self) -> None:
        """Periodic work on the recorder thread."""
        if self._warn_ephemeral_key:
            self._warn_ephemeral_key = False
            log.warning(
                "leza: no secret_key (or LEZA_SECRET_KEY): machine ids and session ids "
                "are signed with a per-process key and will not match across worker "
                "processes or restarts"
            )
        self.cookies.refill()
        if self.settings.sessions:
            self.sessions.poll()
        self.privacy.tick()  # retention: a bounded slice of batched purges when due
        self._settle_traffic()

    def _settle_traffic(self) -> None:
        """About once a minute: the storage's rollup upkeep (SQL sums past hours)."""
        now = time.monotonic()
        if now < self._next_settle or not self.storage.supports(Capability.ROLLUPS):
            return
        self._next_settle = now + _SETTLE_INTERVAL
        try:
            self.storage.settle_traffic()
        except Exception as exc:  # storage down: the next write says so too
            log.debug("leza: traffic rollup upkeep failed: %s", exc)

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

    def _prepare_batch(self, items: list[Any]) -> list[Event]:
        """Prepare a whole batch; raw access records are enriched column-wise."""
        raws = [item for item in items if type(item) is tuple]
        if len(raws) == len(items):
            return list(self.enricher.batch(items)) if items else []
        # Audit rows are chained here, on the recorder thread, in queue order.
        enriched = iter(self.enricher.batch(raws) if raws else ())
        return [next(enriched) if type(item) is tuple else self._prepare(item) for item in items]

    @staticmethod
    def _priority(item: Any) -> bool:
        if type(item) is tuple:
            return is_priority(item)
        return bool(item.priority)

    def record(self, event: Event) -> None:
        """Queue an already-built event (used by the session, audit and log APIs)."""
        self.recorder.offer(event)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Block until everything queued so far is written (or spilled); False on timeout."""
        return self.recorder.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop the availability monitor, flush and stop the recorder, then send
        the notifications still queued; called at interpreter exit too."""
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

    # -- frameworks ----------------------------------------------------------

    def init_app(self, app: Any) -> None:
        """Flask: record every request of ``app`` — ``leza.init_app(app)``.

        Wraps ``app.wsgi_app`` with :class:`~leza_middleware.LezaWSGIMiddleware`,
        reads ``app.config["LEZA_*"]`` (under this Leza's explicit arguments,
        over the environment) and takes the performer from Flask-Login or
        ``flask.g.user``. See :func:`leza_middleware.integrations.flask.init_app`.
        """
        from .integrations.flask import init_app

        init_app(self, app)

    def _reconfigure(self, overrides: Mapping[str, Any], source: str) -> bool:
        """Resolve the settings again with ``overrides`` beneath the explicit arguments.

        For ``Leza(); leza.init_app(app)``, the Flask pattern: the Leza exists
        (configured from the environment) before the app's config is known.
        Precedence is constructor argument > ``overrides`` > ``LEZA_*``
        environment > default. Rebuilding is only allowed while nothing has been
        recorded, so one Leza's events never end up split across two storages.
        Adapters built on this Leza before must not cache its internals (the
        WSGI middleware re-reads them when ``settings`` changes).
        Returns True when the settings changed and the internals were rebuilt.
        """
        settings = Settings.resolve({**overrides, **self._given})
        if settings == self.settings:
            return False
        old = self.recorder
        if old.stats()["enqueued"]:
            raise LezaConfigError(
                f"{source} configures this Leza differently from how it was built, but it "
                "has already recorded events; configure it before it serves requests, or "
                "build one Leza per app"
            )
        self._configure(settings)
        if old.storage is not self.storage:
            # The old recorder never started (nothing was enqueued): this only
            # closes the storage it opened.
            old.shutdown(timeout=0)
        return True

    def __repr__(self) -> str:
        return f"<Leza app={self.settings.app_name!r} storage={self.storage.describe()}>"


def _sum_stats(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The log handlers' counters added up."""
    out: dict[str, Any] = {"recorded": 0, "dropped": {}}
    for part in parts:
        out["recorded"] += part["recorded"]
        for reason, n in part["dropped"].items():
            out["dropped"][reason] = out["dropped"].get(reason, 0) + n
    return out
