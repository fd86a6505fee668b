"""The recorder's work for one configuration, on the recorder thread.

Per item, per batch and per tick, what happens between the queue and storage:
raw access records enriched column-wise, audit rows filtered and chained, log
and check text scrubbed; session changes and advisories derived from each
written batch (advisories scrubbed, anonymised, sent to the notifiers); and
the periodic upkeep (machine ids, the session blocklist, retention, rollups).
Each part it uses is handed to it; it never sees the ``Leza``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .advisories.rules import ALARM_RULES
from .events import SEVERITIES, AdvisoryEvent, AuditEvent, CheckEvent, Event, LogEvent
from .notify import Notification
from .request_path import is_priority
from .storage.capabilities import Capability
from .storage.routed import BackendPaused

if TYPE_CHECKING:
    from .advisories import AdvisoryEngine
    from .audit.api import Audit
    from .config import Settings
    from .enrich.access import AccessEnricher
    from .notify import Notify
    from .privacy import Privacy
    from .redact import Redactor
    from .sessions.cookies import CookieJar
    from .sessions.registry import Sessions
    from .storage.base import Storage

__all__ = ["Pipeline", "priority"]

log = logging.getLogger("leza_middleware")
# Seconds between rollup upkeeps (storage.settle_traffic) on the recorder thread.
_SETTLE_INTERVAL = 60.0
# Seconds until the upkeep is tried again when its backend was paused.
_SETTLE_RETRY = 5.0


def priority(item: Any) -> bool:
    """Whether a queued item goes to the spill file rather than being dropped."""
    if type(item) is tuple:
        return is_priority(item)
    return bool(item.priority)


class Pipeline:
    """``prepare`` / ``prepare_batch``, ``derive`` and ``tick`` of the recorder."""

    def __init__(
        self,
        *,
        settings: Settings,
        storage: Storage,
        enricher: AccessEnricher,
        redactor: Redactor,
        privacy: Privacy,
        audit: Audit,
        sessions: Sessions,
        cookies: CookieJar,
        advisories: AdvisoryEngine | None,
        notify: Notify,
        ephemeral_key: bool,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.enricher = enricher
        self.redactor = redactor
        self.privacy = privacy
        self.audit = audit
        self.sessions = sessions
        self.cookies = cookies
        self.advisories = advisories
        self.notify = notify
        self._next_settle = 0.0
        # Warned about on the recorder thread once the app records, not when built.
        self._warn_ephemeral_key = ephemeral_key and bool(
            settings.machine_cookie
            or settings.sessions
            or any(mode == "hash" for _, mode in settings.anonymize_ip)
        )

    @property
    def derives(self) -> bool:
        """Whether written batches derive events (sessions or advisories are on)."""
        return self.settings.sessions or self.advisories is not None

    # -- per item and per batch ------------------------------------------------

    def prepare(self, item: Any) -> Event:
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

    def prepare_batch(self, items: list[Any]) -> list[Event]:
        """Prepare a whole batch; raw access records are enriched column-wise."""
        raws = [item for item in items if type(item) is tuple]
        if len(raws) == len(items):
            return list(self.enricher.batch(items)) if items else []
        # Audit rows are chained here, on the recorder thread, in queue order.
        enriched = iter(self.enricher.batch(raws) if raws else ())
        return [next(enriched) if type(item) is tuple else self.prepare(item) for item in items]

    # -- after each written batch ----------------------------------------------

    def derive(self, events: list[Event]) -> list[Event]:
        """Per batch: session changes, then advisories."""
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

    # -- periodic ----------------------------------------------------------------

    def tick(self) -> None:
        """Periodic work on the recorder thread."""
        if self._warn_ephemeral_key:
            self._warn_ephemeral_key = False
            log.warning(
                "leza: no secret_key (or LEZA_SECRET_KEY): machine ids and session ids "
                "are signed with a per-process key and will not match across worker "
                "processes or restarts"
            )
        self.cookies.refill()
        # With storage by kind, a task whose backend is paused (it failed; the
        # routed storage reports the outage once) is skipped and the others
        # run: one backend down holds back only its own work. Any other error
        # ends the tick, as with one storage (the recorder logs it, throttled).
        for task in (self._poll_sessions, self.privacy.tick, self._settle_traffic):
            # a skip is counted in stats()["backends"]; tried again after the pause
            with contextlib.suppress(BackendPaused):
                task()

    def _poll_sessions(self) -> None:
        if self.settings.sessions:
            self.sessions.poll()

    def _settle_traffic(self) -> None:
        """About once a minute: the storage's rollup upkeep (SQL sums past hours)."""
        now = time.monotonic()
        if now < self._next_settle or not self.storage.supports(Capability.ROLLUPS):
            return
        self._next_settle = now + _SETTLE_INTERVAL
        try:
            self.storage.settle_traffic()
        except BackendPaused:
            self._next_settle = now + _SETTLE_RETRY  # its backend is down: soon again
        except Exception as exc:  # storage down: the next write says so too
            log.debug("leza: traffic rollup upkeep failed: %s", exc)
