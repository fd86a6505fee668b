"""Notifications: alarms and advisories sent to webhooks, email and logs.

``leza.notify`` is a :class:`Notify`::

    leza.notify.webhook("https://ops.example.com/hooks/leza", secret="s3cret")
    leza.notify.email(host="smtp.example.com", port=587, starttls=True,
                      sender="leza@example.com", recipients=["ops@example.com"],
                      username="leza", password="...")
    leza.notify.add(MyNotifier())

Notifications are queued in memory and sent by one background thread per
process; the caller never waits and never sees an exception. See
``docs/notifications.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from .._adding import adding
from .base import EVENTS, Notification, NotificationError, Notifier
from .dispatch import Dispatcher
from .email import EmailNotifier
from .log import LoggingNotifier
from .webhook import SIGNATURE_HEADER, WebhookNotifier, sign

__all__ = [
    "EVENTS",
    "SIGNATURE_HEADER",
    "Dispatcher",
    "EmailNotifier",
    "LoggingNotifier",
    "Notification",
    "NotificationError",
    "Notifier",
    "Notify",
    "WebhookNotifier",
    "sign",
]

N = TypeVar("N", bound=Notifier)


class Notify:
    """The notification settings of one ``Leza``: its notifiers and their dispatcher.

    Each factory method builds a notifier, adds it and returns it.
    """

    def __init__(
        self,
        notifiers: Iterable[Notifier] = (),
        *,
        dispatcher: Dispatcher | None = None,
        queue_size: int = 1000,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.dispatcher = dispatcher or Dispatcher(
            queue_size=queue_size, shutdown_timeout=shutdown_timeout
        )
        for notifier in notifiers:
            self.dispatcher.add(notifier)

    def __repr__(self) -> str:
        return f"<Notify notifiers={[n.name for n in self.notifiers]!r}>"

    # -- built-in notifiers -------------------------------------------------------

    webhook = adding(
        WebhookNotifier,
        "POST each notification as JSON to ``url`` (signed when ``secret`` is set).",
    )
    email = adding(EmailNotifier, "Email each notification through an SMTP server.")
    log = adding(
        LoggingNotifier, "Write each notification to a logger (``leza.notify`` by default)."
    )

    # -- any notifier ----------------------------------------------------------------

    def add(self, notifier: N) -> N:
        """Add your own :class:`Notifier` (or a built-in one). Returns it."""
        self.dispatcher.add(notifier)
        return notifier

    def remove(self, notifier: Notifier) -> bool:
        return self.dispatcher.remove(notifier)

    @property
    def notifiers(self) -> tuple[Notifier, ...]:
        return self.dispatcher.notifiers

    # -- sending -----------------------------------------------------------------

    def notify(self, notification: Notification) -> bool:
        """Queue a notification for every notifier; returns at once, never raises."""
        return self.dispatcher.notify(notification)

    def stats(self) -> dict[str, Any]:
        return self.dispatcher.stats()

    def flush(self, timeout: float | None = 5.0) -> bool:
        return self.dispatcher.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        return self.dispatcher.shutdown(timeout)
