"""What a check probes: HTTP(S), a TCP port, ``SELECT 1`` on a database, any callable.

A check is configuration plus one ``probe()`` that returns a
:class:`ProbeResult` and never raises. Probes run on the monitor's worker
threads (``monitor.py``), which also enforce the timeout for callables that
ignore it.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import urlsplit

from typing_extensions import Unpack

from ..enrich.text import clean
from ..errors import LezaConfigError

__all__ = [
    "CallableCheck",
    "Check",
    "CheckOptions",
    "HttpCheck",
    "ProbeResult",
    "SqlCheck",
    "TcpCheck",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/ -]{0,99}$")
_MAX_ERROR = 500


class CheckOptions(TypedDict, total=False):
    """What every check takes besides its target (see :class:`Check`)."""

    interval: float
    timeout: float
    retries: int
    resend: float | None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    latency_ms: float
    error: str | None = None


def _error_text(exc: BaseException) -> str:
    # Error texts carry what other systems said (a database's message): one
    # line, storable, before they are stored, shown and sent in alarms.
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return clean(text, _MAX_ERROR)


def _positive(name: str, what: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LezaConfigError(f"check {name!r}: {what} must be a number, got {value!r}") from None
    if not number > 0 or number != number or number == float("inf"):
        raise LezaConfigError(f"check {name!r}: {what} must be > 0, got {value!r}")
    return number


class Check(abc.ABC):
    """One named thing to watch, probed every ``interval`` seconds.

    ``retries`` consecutive failures turn it DOWN, ``retries`` consecutive
    successes turn a DOWN check UP again (``state.py``); ``resend`` re-sends
    the DOWN alarm every that many seconds while it stays down (None: never).
    """

    kind: str = "check"

    def __init__(
        self,
        name: str,
        *,
        interval: float = 30.0,
        timeout: float = 5.0,
        retries: int = 2,
        resend: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise LezaConfigError(
                f"a check name must be 1-100 letters, digits, spaces or _.:@/- "
                f"(starting with a letter or digit), got {name!r}"
            )
        self.name = name
        self.interval = _positive(name, "interval", interval)
        self.timeout = _positive(name, "timeout", timeout)
        if self.timeout > self.interval:
            raise LezaConfigError(
                f"check {name!r}: timeout ({timeout}s) must not exceed the interval ({interval}s)"
            )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
            raise LezaConfigError(
                f"check {name!r}: retries must be an integer >= 1, got {retries!r}"
            )
        self.retries = retries
        self.resend = None if resend is None else _positive(name, "resend", resend)

    def probe(self) -> ProbeResult:
        """Run the check once; a failure is a result, never an exception."""
        start = time.perf_counter()
        try:
            error = self._run()
        except BaseException as exc:  # a callable's sys.exit() is a failed probe too
            error = _error_text(exc)
        latency = (time.perf_counter() - start) * 1000.0
        return ProbeResult(error is None, round(latency, 3), error)

    @abc.abstractmethod
    def _run(self) -> str | None:
        """Probe once: None when healthy, else why not (or raise)."""

    def describe(self) -> str:
        return self.kind

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the check holds (a database engine)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.describe()} every {self.interval:g}s>"


def _expected_statuses(name: str, expect: int | Collection[int] | None) -> frozenset[int] | None:
    if expect is None:
        return None  # any 2xx or 3xx
    values = (expect,) if isinstance(expect, int) else tuple(expect)
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in values
    ):
        raise LezaConfigError(
            f"check {name!r}: expect_status must be HTTP status codes, got {expect!r}"
        )
    return frozenset(values)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer: the check judges its status, it does not follow it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class HttpCheck(Check):
    """GET or HEAD a URL; healthy when the status is expected (default: 2xx/3xx)."""

    kind = "http"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        method: str = "GET",
        expect_status: int | Collection[int] | None = None,
        headers: Mapping[str, str] | None = None,
        **options: Unpack[CheckOptions],
    ) -> None:
        super().__init__(name, **options)
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise LezaConfigError(f"check {name!r}: url must be an http(s) URL, got {url!r}")
        method = str(method).upper()
        if method not in ("GET", "HEAD"):
            raise LezaConfigError(f"check {name!r}: method must be GET or HEAD, got {method!r}")
        self.url = url
        self.method = method
        self.expect = _expected_statuses(name, expect_status)
        self.headers = {"User-Agent": "leza-middleware availability check", **(headers or {})}
        self._opener = urllib.request.build_opener(_NoRedirect)

    def _run(self) -> str | None:
        request = urllib.request.Request(self.url, method=self.method, headers=self.headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status = int(response.status)
                response.read(65536)  # a bounded read: the body must arrive, but may be big
        except urllib.error.HTTPError as exc:  # 4xx/5xx, and 3xx when not followed
            status = int(exc.code)
            exc.close()
        ok = 200 <= status < 400 if self.expect is None else status in self.expect
        return None if ok else f"HTTP {status}"

    def describe(self) -> str:
        return f"{self.method} {self.url}"


class TcpCheck(Check):
    """Connect to a TCP port; healthy when the connection is accepted."""

    kind = "tcp"

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        **options: Unpack[CheckOptions],
    ) -> None:
        super().__init__(name, **options)
        if not isinstance(host, str) or not host:
            raise LezaConfigError(f"check {name!r}: host must be a host name or IP, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise LezaConfigError(f"check {name!r}: port must be 1-65535, got {port!r}")
        self.host = host.strip("[]")
        self.port = port

    def _run(self) -> str | None:
        with socket.create_connection((self.host, self.port), timeout=self.timeout):
            return None

    def describe(self) -> str:
        return f"tcp {self.host}:{self.port}"


class SqlCheck(Check):
    """``SELECT 1`` through SQLAlchemy against a database URL (a fresh connection each time)."""

    kind = "sql"

    def __init__(
        self,
        name: str,
        url: str,
        **options: Unpack[CheckOptions],
    ) -> None:
        super().__init__(name, **options)
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            self._url = make_url(url)
        except (ArgumentError, TypeError, ValueError):
            raise LezaConfigError(f"check {name!r}: not a database URL: {url!r}") from None
        self._engine: Any = None
        self._lock = threading.Lock()

    def _engine_for(self) -> Any:
        with self._lock:
            if self._engine is None:
                from sqlalchemy import create_engine
                from sqlalchemy.pool import NullPool

                backend = self._url.get_backend_name()
                args: dict[str, Any] = {}
                if backend == "sqlite":
                    args = {"timeout": self.timeout}
                elif backend == "postgresql":
                    args = {"connect_timeout": max(1, int(self.timeout))}
                # NullPool: each probe really connects; a pooled connection would
                # hide a server that stopped accepting new ones.
                self._engine = create_engine(self._url, poolclass=NullPool, connect_args=args)
            return self._engine

    def _run(self) -> str | None:
        from sqlalchemy import text

        with self._engine_for().connect() as conn:
            value = conn.execute(text("SELECT 1")).scalar()
        return None if value == 1 else f"SELECT 1 returned {value!r}"

    def describe(self) -> str:
        return f"sql {self._url.render_as_string(hide_password=True)}"

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


class CallableCheck(Check):
    """Call a function or coroutine function: healthy unless it raises or returns False.

    Raise with a message to say why (``raise RuntimeError("queue backlog 5000")``):
    the message becomes the check's error.
    """

    kind = "callable"

    def __init__(
        self,
        name: str,
        fn: Callable[[], Any],
        **options: Unpack[CheckOptions],
    ) -> None:
        super().__init__(name, **options)
        if not callable(fn):
            raise LezaConfigError(f"check {name!r}: expected a callable, got {type(fn).__name__}")
        self.fn = fn

    def _run(self) -> str | None:
        result = self.fn()
        if inspect.isawaitable(result):
            result = asyncio.run(_bounded(result, self.timeout))
        return "returned False" if result is False else None

    def describe(self) -> str:
        return f"callable {getattr(self.fn, '__qualname__', type(self.fn).__name__)}"


async def _bounded(awaitable: Any, timeout: float) -> Any:
    return await asyncio.wait_for(awaitable, timeout)
