"""What a notification is, and the base class of every notifier."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from ..errors import LezaError

__all__ = ["EVENTS", "STATES", "Notification", "NotificationError", "Notifier"]

#: The kinds of notification the library sends.
EVENTS = frozenset({"down", "recovered", "still_down", "advisory"})
#: The states of an availability check a notification may carry.
STATES = frozenset({"up", "down"})


class NotificationError(LezaError):
    """A notifier could not deliver a notification.

    Raised by the built-in notifiers' ``send()``; the dispatcher catches it,
    counts it as ``failed`` and logs it. The message never contains a secret,
    a password or a webhook URL's path (which often is a secret itself).
    """


@dataclass(frozen=True)
class Notification:
    """One message to the operators: a check went down or recovered, or an advisory.

    ``to_dict()`` is the webhook body. A notification is immutable; ``details``
    is copied into a read-only mapping.
    """

    #: ``"down"``, ``"recovered"``, ``"still_down"`` (resent while down) or ``"advisory"``.
    event: str
    #: The availability check's name (``None`` for an advisory not about a check).
    check: str | None
    #: The check's state: ``"up"``, ``"down"``, or ``None`` (advisories).
    state: str | None
    #: When it happened: an aware datetime, stored in UTC.
    at: datetime
    #: The last error of the check (``"connection refused"``), if any.
    error: str | None = None
    #: The last probe's latency in milliseconds, if measured.
    latency_ms: float | None = None
    #: A human sentence; built from the other fields when left empty.
    message: str = ""
    #: ``"info"``, ``"low"``, ``"medium"``, ``"high"``, ``"critical"`` (free text).
    severity: str = "info"
    #: Extra JSON-able data, e.g. an advisory's ``rule`` and ``evidence`` event ids.
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(
                f"Notification.event must be one of {sorted(EVENTS)}, got {self.event!r}"
            )
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"Notification.state must be 'up', 'down' or None, got {self.state!r}")
        if not isinstance(self.at, datetime):
            raise TypeError(f"Notification.at must be a datetime, got {type(self.at).__name__}")
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError(
                "Notification.at must be timezone-aware (use datetime.now(timezone.utc))"
            )
        if self.at.tzinfo is not timezone.utc:
            object.__setattr__(self, "at", self.at.astimezone(timezone.utc))
        if self.latency_ms is not None:
            object.__setattr__(self, "latency_ms", float(self.latency_ms))
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))
        if not self.message:
            object.__setattr__(self, "message", _default_message(self))

    def to_dict(self) -> dict[str, Any]:
        """The JSON body a webhook receives.

        ``at`` is ISO 8601 in UTC with a ``Z`` suffix, e.g.
        ``"2026-05-09T07:35:25.123456Z"``.
        """
        return {
            "event": self.event,
            "check": self.check,
            "state": self.state,
            "at": iso_z(self.at),
            "error": self.error,
            "latency_ms": self.latency_ms,
            "message": self.message,
            "severity": self.severity,
            "details": dict(self.details),
        }


def iso_z(at: datetime) -> str:
    """``2026-05-09T07:35:25.123456Z`` for an aware datetime."""
    return at.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _default_message(n: Notification) -> str:
    name = repr(n.check) if n.check else "a check"
    tail = f": {n.error}" if n.error else ""
    if n.event == "down":
        return f"Check {name} is DOWN{tail}"
    if n.event == "still_down":
        return f"Check {name} is still DOWN{tail}"
    if n.event == "recovered":
        return f"Check {name} has RECOVERED"
    return f"Advisory ({n.severity}){': ' + n.check if n.check else ''}"


class Notifier(abc.ABC):
    """Base class of every notifier. Subclass it to send notifications anywhere.

    ``send()`` runs on the dispatcher's background thread, one notification at a
    time, never on a request. It raises on failure; the dispatcher counts and
    logs the failure and goes on with the next notifier. Keep it bounded in
    time (use timeouts): a hanging ``send()`` holds back every later
    notification.

    Example::

        class SlackNotifier(Notifier):
            name = "slack"

            def send(self, notification: Notification) -> None:
                post_to_slack(notification.message)
    """

    #: A short label used in ``stats()`` and in log lines. Never put a secret in it.
    name: str = ""

    @abc.abstractmethod
    def send(self, notification: Notification) -> None:
        """Deliver one notification, or raise."""

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release resources; called once by ``Dispatcher.shutdown()``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
