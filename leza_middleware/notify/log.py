"""Logging notifier: each notification becomes one record on a logger."""

from __future__ import annotations

import logging

from ..errors import LezaConfigError
from .base import Notification, Notifier

__all__ = ["LoggingNotifier"]

_LEVELS = {
    "down": logging.WARNING,
    "still_down": logging.WARNING,
    "advisory": logging.WARNING,
    "recovered": logging.INFO,
}


class LoggingNotifier(Notifier):
    """Write each notification to a logger (``leza.notify`` by default).

    Levels: WARNING for ``down``, ``still_down`` and ``advisory``; INFO for
    ``recovered``; or ``level`` for all of them when given. The record's
    message is the notification's sentence, and ``record.leza_notification``
    holds its ``to_dict()`` (for JSON log formatters).

    The default logger is deliberately *not* under ``leza_middleware``: those
    are the library's own diagnostics, while alarms belong in the app's logs.
    """

    def __init__(
        self,
        logger: str | logging.Logger = "leza.notify",
        level: int | str | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.logger = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
        if isinstance(level, str):
            resolved = logging.getLevelName(level.upper())
            if not isinstance(resolved, int):
                raise LezaConfigError(f"LoggingNotifier level: unknown level name {level!r}")
            level = resolved
        self.level = level
        self.name = name or f"log {self.logger.name}"

    def level_for(self, notification: Notification) -> int:
        if self.level is not None:
            return self.level
        return _LEVELS.get(notification.event, logging.WARNING)

    def send(self, notification: Notification) -> None:
        self.logger.log(
            self.level_for(notification),
            "%s",
            notification.message,
            extra={"leza_notification": notification.to_dict()},
        )
