"""Service availability: ``leza.availability.http(...)``, ``.tcp(...)``, ``.check(...)``.

Checks are probed by one monitor per deployment (``leader.py``), every
result is stored as a ``check`` event, uptime is computed from that stored
history, and state changes go to ``leza.notify``'s notifiers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from .._adding import adding
from ..errors import LezaConfigError
from ..events import CheckEvent
from ..query import TimeLike, to_us
from .checks import (
    CallableCheck,
    Check,
    CheckOptions,
    HttpCheck,
    ProbeResult,
    SqlCheck,
    TcpCheck,
)
from .leader import leadership_for
from .monitor import Maintenance, Monitor
from .uptime import WINDOWS, last_result, uptime

if TYPE_CHECKING:
    from ..events import Event
    from ..notify import Notify
    from ..storage.base import Storage

__all__ = [
    "Availability",
    "CallableCheck",
    "Check",
    "CheckOptions",
    "HttpCheck",
    "Maintenance",
    "ProbeResult",
    "SqlCheck",
    "TcpCheck",
]

log = logging.getLogger("leza_middleware.availability")

C = TypeVar("C", bound=Check)

_ALARM_SEVERITY = {"down": "high", "still_down": "high", "recovered": "info"}


class Availability:
    """The checks of one :class:`~leza_middleware.Leza` and their state.

    Registering the first check starts the monitor thread (``autostart``);
    the process that wins the monitor's leadership probes, every process can
    read :meth:`status`. Every check takes the :class:`CheckOptions`
    ``interval`` (30 s), ``timeout`` (5 s), ``retries`` (2) and ``resend``
    (None: never), as keywords.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        record: Callable[[Event], None],
        flush: Callable[[float], bool],
        notify: Notify,
        app_name: str,
        autostart: bool = True,
    ) -> None:
        """``record`` queues a probe's result and ``flush`` writes what is queued
        (the recorder's ``offer`` and ``flush``); ``storage`` is read for uptime
        and leadership; state changes go to ``notify``."""
        self._storage = storage
        self._flush = flush
        self._notify = notify
        self.autostart = autostart
        self.monitor = Monitor(
            record=record,
            notify=self._alarm,
            leadership=leadership_for(storage, app_name),
            app_name=app_name,
            last_result=self._stored_result,
            before_release=self._write_results,
        )
        self._lock = threading.Lock()

    # -- registering checks ----------------------------------------------------

    def add(self, check: C) -> C:
        """Register any :class:`Check` (a subclass of your own too)."""
        if not isinstance(check, Check):
            raise LezaConfigError(f"expected a Check, got {type(check).__name__}")
        self.monitor.add(check)
        if self.autostart:
            self.monitor.start()
        return check

    http = adding(
        HttpCheck, "GET/HEAD ``url``; healthy on ``expect_status`` (default any 2xx/3xx)."
    )
    tcp = adding(TcpCheck, "Connect to ``host:port``; healthy when it accepts.")
    sql = adding(SqlCheck, "``SELECT 1`` on a database URL (any SQLAlchemy URL).")
    check = adding(
        CallableCheck, "Call ``fn`` (sync or ``async``): healthy unless it raises or returns False."
    )

    def remove(self, name: str) -> bool:
        """Stop probing the check called ``name`` (its history stays)."""
        return self.monitor.remove(name)

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(self.monitor.checks())

    def maintenance(
        self,
        start: TimeLike = None,
        end: TimeLike = None,
        *,
        duration: float | None = None,
        checks: Collection[str] | None = None,
        reason: str = "",
    ) -> Maintenance:
        """Silence alarms from ``start`` (default now) to ``end`` or for ``duration`` seconds.

        Probes still run and are stored: the window only keeps notifiers quiet.
        ``checks`` limits it to some checks by name (default: all).
        """
        begin = to_us(start) if start is not None else time.time_ns() // 1000
        assert begin is not None
        if (end is None) == (duration is None):
            raise LezaConfigError("maintenance: give either end or duration")
        finish: int | None
        if duration is not None:
            if not duration > 0:
                raise LezaConfigError(f"maintenance: duration must be > 0, got {duration!r}")
            finish = begin + int(duration * 1_000_000)
        else:
            finish = to_us(end)
        assert finish is not None
        if finish <= begin:
            raise LezaConfigError("maintenance: the window ends before it starts")
        window = Maintenance(begin, finish, None if checks is None else frozenset(checks), reason)
        self.monitor.add_maintenance(window)
        return window

    # -- reading -----------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """Each registered check: state, uptime over 24 h / 7 d / 30 d, last probe.

        ``{"billing": {"state": "up", "since": "…Z", "uptime_24h": 99.93,
        "uptime_7d": …, "uptime_30d": …, "last_latency_ms": 12.5,
        "last_checked": "…Z", "last_error": None, "kind": "http"}}``.
        Uptime is the percentage of stored probes in the window whose check
        was UP (None before any probe); probes run at a fixed interval, so it
        is also the share of time. Works in every process: what the leader
        stored is read back from storage.
        """
        storage = self._storage
        now = time.time_ns() // 1000
        out: dict[str, dict[str, Any]] = {}
        for check in self.monitor.checks():
            local = self.monitor.local_state(check.name)
            last: CheckEvent | None
            if local is not None:
                state, last, since = local
            else:
                last = last_result(storage, check.name)
                state = "unknown" if last is None else last.state
                since = None
            entry: dict[str, Any] = {
                "state": state,
                "kind": check.kind,
                "target": check.describe(),
                "since": None if since is None else _iso(since),
                "last_checked": None if last is None else _iso(last.ts),
                "last_latency_ms": None if last is None else last.latency_ms,
                "last_error": None if last is None else last.error,
            }
            for label, seconds in WINDOWS.items():
                entry[f"uptime_{label}"] = uptime(storage, check.name, now - seconds * 1_000_000)
            out[check.name] = entry
        return out

    @property
    def is_leader(self) -> bool:
        """Whether this process is the one probing."""
        return self.monitor.is_leader

    def start(self) -> None:
        self.monitor.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self.monitor.stop(timeout)

    # -- leadership --------------------------------------------------------------

    def _stored_result(self, name: str, since: int) -> CheckEvent | None:
        """What a new leader goes on from: the newest stored probe of ``name``."""
        return last_result(self._storage, name, since)

    def _write_results(self, timeout: float) -> bool:
        """Before stepping down: the check results still queued go to storage."""
        return self._flush(timeout)

    # -- alarms ------------------------------------------------------------------

    def _alarm(self, event: CheckEvent, decision: str, check: Check) -> None:
        from ..notify import Notification

        what = {
            "down": f"{check.name} is DOWN",
            "still_down": f"{check.name} is still DOWN",
            "recovered": f"{check.name} has RECOVERED",
        }[decision]
        detail = f": {event.error}" if event.error and decision != "recovered" else ""
        self._notify.notify(
            Notification(
                event=decision,
                check=check.name,
                state=event.state if event.state != "unknown" else None,
                at=datetime.fromtimestamp(event.ts / 1_000_000, tz=timezone.utc),
                error=event.error,
                latency_ms=event.latency_ms,
                message=f"{what} ({check.describe()}){detail}",
                severity=_ALARM_SEVERITY[decision],
                details={"event_id": event.id, "kind": check.kind, "app": event.app},
            )
        )


def _iso(ts_us: int) -> str:
    from ..events import iso_from_us

    return iso_from_us(ts_us)
