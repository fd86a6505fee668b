"""How a ``Leza``'s parts are built from its settings, and who gets which part.

Two steps. :func:`open_inputs` builds what can still fail on a bad setting
(the storage URL, the trusted proxies, the GeoIP file): run when a ``Leza``
is made and again when ``init_app`` brings a Flask app's config, so a bad
value is a :class:`~leza_middleware.LezaConfigError` at configuration time.
:func:`build` then wires everything else, once, at the Leza's first use. Each
subsystem receives only the parts it uses (the dependency direction is
adapters → request core → recorder → enrichers → storage)::

    storage gate (ReadyStorage)  ← query, sessions, audit, trace, erasure
    keyring                      ← cookies, audit (chain key), anonymisation, erasure
    redactor                     ← enricher, audit, anonymisation, pipeline
    recorder.offer / .flush      ← audit, availability, log handler, erasure
    pipeline (prepare, derive, tick) ← recorder
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import gcfreeze
from .advisories import AdvisoryEngine, default_rules
from .audit.api import Audit
from .availability import Availability
from .core.hooks import Faults, Hooks
from .enrich.access import AccessEnricher
from .enrich.clientip import ProxyTrust
from .enrich.geo import GeoResolver
from .enrich.useragent import UserAgentParser
from .errors import LezaConfigError
from .permissions import Permissions
from .pipeline import Pipeline, priority
from .privacy import Erasure, IpPolicy, Privacy, Retention, check_retention
from .query import Query
from .ready import ReadyStorage
from .recorder import Recorder
from .redact import Redactor
from .sessions.cookies import CookieJar, Keyring
from .sessions.registry import Sessions
from .spill import Spill, default_spill_dir
from .state.build import Live
from .storage import Storage, backends_of, is_sql, open_storage
from .trace import Trace

if TYPE_CHECKING:
    from .config import Settings
    from .notify import Notify

__all__ = ["Inputs", "Parts", "build", "open_inputs"]


@dataclass(frozen=True)
class Inputs:
    """What the settings open that can fail: validated before anything is built."""

    storage: Storage
    proxies: ProxyTrust
    geo: GeoResolver


def open_inputs(settings: Settings, previous: tuple[Settings, Inputs] | None = None) -> Inputs:
    """Open the storage (no connection yet), the proxy list and the GeoIP database.

    ``previous``: the settings and inputs of the configuration this one
    replaces (init_app); parts whose setting did not change are kept (the
    GeoIP database stays open and warns only once).
    """
    old_settings, old = previous if previous is not None else (None, None)
    if old is not None and old_settings is not None and old_settings.storage == settings.storage:
        storage = old.storage
    else:
        storage = open_storage(settings.storage)
    check_retention(settings.retention, storage)  # a purge it cannot do fails here
    if settings.sessions and not storage.stores("session"):
        # Without sessions in storage the revocation blocklist cannot load, and a
        # request with a session cookie would be refused (revocation_unknown).
        raise LezaConfigError(
            f"storage {storage.describe()} keeps no session events, which sessions=True "
            "(the default) needs: keep them elsewhere with storage={'access': …, 'log': …, "
            "'default': '<SQL URL>'} (docs/storage.md#storage-by-kind), or set sessions=False"
        )
    if settings.migrate:
        for backend in backends_of(storage):
            if is_sql(backend):
                backend.auto_migrate = True  # applied by its first setup(): first write or read
    proxies = ProxyTrust(settings.trusted_proxies)
    geo_setting = settings.geoip_db
    if old is not None and old_settings is not None and old_settings.geoip_db == geo_setting:
        geo = old.geo
    else:
        geo = GeoResolver.disabled() if geo_setting is False else GeoResolver.open(geo_setting)
    return Inputs(storage, proxies, geo)


@dataclass(frozen=True)
class Parts:
    """Everything one configuration runs on (``Leza``'s attributes of the same names)."""

    storage: Storage
    proxies: ProxyTrust
    geo: GeoResolver
    user_agents: UserAgentParser
    keyring: Keyring
    redactor: Redactor
    hooks: Hooks
    privacy: Privacy
    enricher: AccessEnricher
    cookies: CookieJar
    sessions: Sessions
    audit: Audit
    advisories: AdvisoryEngine | None
    permissions: Permissions
    pipeline: Pipeline
    recorder: Recorder
    query: Query
    trace: Trace
    availability: Availability


def build(settings: Settings, inputs: Inputs, *, faults: Faults, notify: Notify) -> Parts:
    """Wire one configuration's parts (see the module documentation)."""
    storage, proxies, geo = inputs.storage, inputs.proxies, inputs.geo
    gate = ReadyStorage(storage)
    # The app's request-time callables, guarded (core/hooks.py).
    hooks = Hooks(settings.performer, settings.revoked_response, faults)
    user_agents = UserAgentParser()
    keyring = Keyring(settings.secret_key)
    # Secret names (leza_middleware.redact's list plus the deployment's), for everything stored.
    redactor = Redactor([*settings.redact_query_keys, *settings.audit_mask])
    cookies = CookieJar(
        keyring,
        machine_cookie=settings.machine_cookie,
        machine_max_age=settings.machine_cookie_max_age,
        session_cookie=settings.session_cookie,
    )
    cookies.refill()  # machine ids ready before the first request
    sessions = Sessions(settings, gate)
    # The recorder is made after the parts that feed it; what they queue goes
    # through its offer(), bound below once it exists.
    recorder_box: list[Recorder] = []

    def offer(item: object) -> None:
        recorder_box[0].offer(item)

    def flush(timeout: float | None = 5.0) -> bool:
        return recorder_box[0].flush(timeout)

    audit = Audit(
        app_name=settings.app_name,
        keyring=keyring,
        redactor=redactor,
        record=offer,
        storage=gate,
        hooks=hooks,
        proxies=proxies,
    )
    privacy = Privacy(
        IpPolicy(settings.anonymize_ip, keyring.subkey(b"anonymize-ip"), redactor),
        Retention(settings.retention, settings.retention_interval, storage, audit.purge_batches),
        Erasure(
            flush=flush,
            storage=gate,
            keyring=keyring,
            audit_key=audit.key,
            revoke_all=sessions.revoke_all,
        ),
    )
    enricher = AccessEnricher(
        user_agents=user_agents,
        geo=geo,
        proxies=proxies,
        redactor=redactor,
        app_name=settings.app_name,
        anonymize_ip=privacy.access_anonymizer(),
    )
    advisories: AdvisoryEngine | None = None
    if settings.advisories:
        rules = settings.advisory_rules
        advisories = AdvisoryEngine(
            list(default_rules() if rules is None else rules), storage, app_name=settings.app_name
        )
    permissions = Permissions(settings.permissions, settings.app_name, settings.has_permission)
    pipeline = Pipeline(
        settings=settings,
        storage=storage,
        enricher=enricher,
        redactor=redactor,
        privacy=privacy,
        audit=audit,
        sessions=sessions,
        cookies=cookies,
        advisories=advisories,
        notify=notify,
        ephemeral_key=keyring.ephemeral,
    )
    availability_box: list[Availability] = []
    recorder = Recorder(
        storage,
        pipeline.prepare,
        Spill(settings.spill_dir or default_spill_dir(storage.describe())),
        prepare_batch=pipeline.prepare_batch,
        priority=priority,
        derive=pipeline.derive if pipeline.derives else None,
        tick=_with_gc_freeze(pipeline.tick) if settings.gc_freeze else pipeline.tick,
        on_fork=(
            sessions.after_fork,
            cookies.after_fork,
            audit.after_fork,
            lambda: availability_box[0].monitor.after_fork(),
            privacy.after_fork,
        ),
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval,
        queue_size=settings.queue_size,
        max_retries=settings.max_retries,
        shutdown_timeout=settings.shutdown_timeout,
    )
    recorder_box.append(recorder)
    availability = Availability(
        storage=storage,
        record=recorder.offer,
        flush=recorder.flush,
        notify=notify,
        app_name=settings.app_name,
    )
    availability_box.append(availability)
    # STATE reports this process's recorder counters and monitor's checks.
    query = Query(storage, ready=gate, live=Live(recorder, availability.monitor))
    trace = Trace(settings, gate, None if keyring.ephemeral else audit.key)
    return Parts(
        storage=storage,
        proxies=proxies,
        geo=geo,
        user_agents=user_agents,
        keyring=keyring,
        redactor=redactor,
        hooks=hooks,
        privacy=privacy,
        enricher=enricher,
        cookies=cookies,
        sessions=sessions,
        audit=audit,
        advisories=advisories,
        permissions=permissions,
        pipeline=pipeline,
        recorder=recorder,
        query=query,
        trace=trace,
        availability=availability,
    )


def _with_gc_freeze(tick: Callable[[], None]) -> Callable[[], None]:
    """The recorder's tick, then ``gc.freeze()`` when due (gcfreeze.py): after the
    tick, so the first freeze finds the blocklist and caches it loads."""

    def both() -> None:
        try:
            tick()
        finally:
            gcfreeze.tick()

    return both
