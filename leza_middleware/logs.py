"""The LOG tab: the app's own ``logging`` records, through the same recorder.

``logging.getLogger().addHandler(leza.logging_handler())``. Each record is
stored with its level, logger, message, exception text and where it was
written, plus the request id, performer and route of the request it was
written in (``context.py``).

What keeps it from hurting the app:

* never recursive: the library's own loggers (``leza_middleware.*``) are
  skipped, and a record emitted while the handler is already working on this
  thread (a performer hook that logs, say) is dropped;
* rate-limited (a token bucket, ``rate`` records/s with bursts of ``burst``),
  and it backs off when the recorder's queue is half full, so a flood of log
  records can neither exhaust memory nor crowd access events out of the queue;
* bounded records: message and exception text are cut at a size limit;
* nothing raises into the caller; every record not stored is counted
  (:meth:`LezaLogHandler.stats`, also in ``leza.stats()["logs"]``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .context import current_native, current_request_id
from .enrich.text import clean_lines
from .events import LogEvent
from .ids import new_event_id

if TYPE_CHECKING:
    from .performer import Performer
    from .recorder import Recorder

__all__ = ["LezaLogHandler"]

_OWN = "leza_middleware"
_formatter = logging.Formatter()


class LezaLogHandler(logging.Handler):
    """A :class:`logging.Handler` that records into a recorder (``leza.logging_handler()``)."""

    def __init__(
        self,
        recorder: Recorder,
        performer: Callable[[], Performer | None],
        app_name: str,
        level: int | str = logging.NOTSET,
        *,
        rate: float = 500.0,
        burst: int = 2000,
        max_message: int = 8192,
        max_exception: int = 32768,
    ) -> None:
        super().__init__(level)
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.recorder = recorder  # queue it records into (and whose room it leaves to requests)
        self.performer = performer  # who makes the running request (leza.audit's answer)
        self.app_name = app_name
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_message = max_message
        self.max_exception = max_exception
        self._tokens = float(burst)
        self._refilled = time.monotonic()
        self._bucket = threading.Lock()
        self._busy = threading.local()
        self.recorded = 0
        self.dropped: dict[str, int] = {"rate_limited": 0, "backpressure": 0, "error": 0}

    def stats(self) -> dict[str, Any]:
        with self._bucket:
            return {"recorded": self.recorded, "dropped": dict(self.dropped)}

    def _count(self, reason: str | None) -> None:
        with self._bucket:
            if reason is None:
                self.recorded += 1
            else:
                self.dropped[reason] += 1

    def _take_token(self) -> bool:
        with self._bucket:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name
        if name == _OWN or name.startswith("leza_middleware."):
            return  # the library's own records: shipping them could loop
        if getattr(self._busy, "on", False):
            return  # re-entered from inside emit (a hook that logs)
        self._busy.on = True
        try:
            self._emit(record)
        except Exception:
            self._count("error")
        finally:
            self._busy.on = False

    def _emit(self, record: logging.LogRecord) -> None:
        if not self._take_token():
            self._count("rate_limited")
            return
        recorder = self.recorder
        if recorder.pending * 2 >= recorder.queue_size:
            self._count("backpressure")  # keep room for access events
            return
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: store the template rather than nothing
            message = f"{record.msg!s} (arguments did not format: {record.args!r})"
        exception = record.exc_text
        if exception is None and record.exc_info and record.exc_info[0] is not None:
            exception = _formatter.formatException(record.exc_info)
        if exception is None and record.stack_info:
            exception = record.stack_info
        request_id = current_request_id()
        performer_id = route = None
        if request_id is not None:
            performer = self.performer()
            performer_id = None if performer is None else performer.id
            route = _route(current_native())
        ts = int(record.created * 1_000_000)
        recorder.offer(
            LogEvent(
                id=new_event_id(ts),
                ts=ts,
                level=record.levelno,
                logger=_cut(record.name, 200),
                message=_cut(message, self.max_message),
                exception=None if exception is None else _cut(exception, self.max_exception),
                request_id=request_id,
                performer_id=performer_id,
                route=route,
                origin=f"{record.module}.py:{record.lineno} in {record.funcName}",
                app=self.app_name,
            )
        )
        self._count(None)


def _cut(text: str, limit: int) -> str:
    """Bounded, and safe to store; line breaks and tabs belong in log records."""
    if len(text) > limit:
        text = text[:limit] + f"… [{len(text) - limit} more]"
    return clean_lines(text)


def _route(native: Any) -> str | None:
    """The matched route template of the running request, where the framework has one."""
    from .request_path import normalise_route

    try:
        if isinstance(native, dict):
            if native.get("type") in ("http", "websocket"):  # ASGI: Starlette sets scope["route"]
                path = getattr(native.get("route"), "path", None)
            else:  # WSGI environ: the Flask integration leaves the rule here
                path = native.get("leza.route") or _flask_rule()
        else:  # Django
            match = getattr(native, "resolver_match", None)
            path = None if match is None else "/" + str(match.route).lstrip("^")
        return None if not path else normalise_route(str(path))
    except Exception:
        return None


def _flask_rule() -> str | None:
    try:
        from flask import has_request_context, request
    except ImportError:
        return None
    if not has_request_context() or request.url_rule is None:
        return None
    return str(request.url_rule.rule)
