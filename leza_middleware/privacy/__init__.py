"""Privacy controls, one module each (``docs/privacy.md``):

* :mod:`.headers`: ``record_headers``, the opt-in headers stored with access
  events; names that can carry credentials are refused when settings are read;
* :mod:`.anonymize`: ``anonymize_ip``, IPs truncated or keyed-hashed on the
  recorder thread before anything is stored or spilled;
* :mod:`.retention`: ``retention``, old rows purged per kind in batches by the
  recorder's periodic tick;
* :mod:`.forget`: erasure of one person (``leza.forget``), audit rows redacted
  under signed entries so the chain still verifies.

:class:`Privacy` (``leza.privacy``) puts the three running parts together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..events import AuditEvent, Event
from .anonymize import IP_KINDS, IP_MODES, IpAnonymizer, IpPolicy, parse_anonymize_ip, private_geo
from .forget import (
    FORGOTTEN,
    Erasure,
    ForgetReport,
    compile_identifiers,
    forget_event,
    identifiers_of,
    plan_redactions,
    redact_audit_event,
    redaction_is_valid,
    scrub_json,
    scrub_session,
    scrub_text,
    sign_redaction,
)
from .headers import DENIED_HEADER_PARTS, DENIED_HEADERS, parse_record_headers, stored_headers
from .retention import (
    DEFAULT_RETENTION,
    RETENTION_KINDS,
    Retention,
    check_retention,
    effective_retention,
    parse_duration,
    parse_retention,
)

__all__ = [
    "DEFAULT_RETENTION",
    "DENIED_HEADERS",
    "DENIED_HEADER_PARTS",
    "FORGOTTEN",
    "IP_KINDS",
    "IP_MODES",
    "RETENTION_KINDS",
    "Erasure",
    "ForgetReport",
    "IpAnonymizer",
    "IpPolicy",
    "Privacy",
    "Retention",
    "check_retention",
    "compile_identifiers",
    "effective_retention",
    "forget_event",
    "identifiers_of",
    "parse_anonymize_ip",
    "parse_duration",
    "parse_record_headers",
    "parse_retention",
    "plan_redactions",
    "private_geo",
    "redact_audit_event",
    "redaction_is_valid",
    "scrub_json",
    "scrub_session",
    "scrub_text",
    "sign_redaction",
    "stored_headers",
]


class Privacy:
    """``leza.privacy``: anonymisation on the recorder thread, retention, erasure."""

    def __init__(self, ips: IpPolicy, retention: Retention, erasure: Erasure) -> None:
        self.ips = ips
        self.purger = retention
        self.erasure = erasure
        #: ``anonymize_ip`` per kind, and each kind's anonymiser.
        self.modes = ips.modes
        self.anonymizers = ips.anonymizers
        #: Seconds each kind is kept (kinds kept forever left out).
        self.retention = retention.kinds
        self.retention_interval = retention.interval

    def after_fork(self) -> None:
        self.purger.after_fork()

    # -- recorder thread: anonymisation ----------------------------------------

    def access_anonymizer(self) -> IpAnonymizer | None:
        return self.ips.access_anonymizer()

    def prepare_audit(self, event: AuditEvent) -> None:
        self.ips.prepare_audit(event)

    def derived(self, events: Sequence[Event]) -> None:
        self.ips.derived(events)

    # -- recorder thread: retention --------------------------------------------

    @property
    def purged(self) -> dict[str, int]:
        """Rows purged per kind by this process's retention so far."""
        return self.purger.purged

    @property
    def purging(self) -> bool:
        """Whether a retention purge is under way (it goes on at the next tick)."""
        return self.purger.running

    def tick(self) -> None:
        self.purger.tick()

    def run_retention(self) -> dict[str, int]:
        """Purge every kind with a retention now, to the end (CLI, tests, cron)."""
        return self.purger.run()

    # -- erasure ---------------------------------------------------------------

    def forget(
        self, performer_id: str, *, identifiers: Iterable[str] = (), timeout: float = 10.0
    ) -> ForgetReport:
        """Erase what is recorded about one person (see :meth:`Leza.forget`)."""
        return self.erasure.forget(performer_id, identifiers=identifiers, timeout=timeout)
