"""The ClickHouse backend's URL, checked without connecting, and its driver,
imported only when a ClickHouse storage is opened.

``clickhouse://[user[:password]@]host[:port]/database[?connect_timeout=S&timeout=S&ping_timeout=S&cluster=NAME]``:
the native protocol (port 9000 by default) through ``clickhouse-driver``
(the ``[clickhouse]`` extra). ``cluster``: shard over that cluster of the
server's ``<remote_servers>`` through ``Distributed`` tables.

Timeouts are short by default (3 s to connect, 10 s of silence, 3 s for a
ping): a server that hangs (stopped, a network black hole) then fails a batch
within seconds and the recorder spills it, instead of holding the recorder for
the driver's own 300 s. The same seconds go to the server with every statement
(``connect_timeout``, ``receive_timeout``, ``send_timeout``,
``insert_distributed_timeout``), for its own connections to the other shards.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import LezaConfigError

__all__ = ["ClickHouseURL", "connect", "driver_quiet", "parse_clickhouse_url"]

EXAMPLE = "clickhouse://host:9000/leza"
DEFAULT_PORT = 9000
#: Database names are spliced into statements (quoted): a plain identifier only.
_DATABASE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: Query parameters in seconds, each with its upper bound (a longer wait is a
#: typo, not a setting), and ``cluster``.
_SECONDS = {"connect_timeout": 300.0, "timeout": 3600.0, "ping_timeout": 300.0}
_NUMBER = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?")
#: clickhouse-driver's own names for two of them, accepted too.
_ALIASES = {"send_receive_timeout": "timeout", "sync_request_timeout": "ping_timeout"}
_PARAMS = {*_SECONDS, *_ALIASES, "cluster"}
#: Defaults: a hung server fails a statement within seconds, not the driver's
#: 300 s (the timeout is the longest silence: a long SELECT sends progress).
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_PING_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class ClickHouseURL:
    host: str
    port: int
    database: str
    user: str = "default"
    password: str = ""
    #: seconds to open a connection
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: seconds a statement may wait for the server to send or take data
    timeout: float = DEFAULT_TIMEOUT
    #: seconds for the ping before a pooled connection is reused
    ping_timeout: float = DEFAULT_PING_TIMEOUT
    cluster: str | None = None  # shard over this cluster (Distributed tables)

    def server_settings(self) -> dict[str, int]:
        """The same limits for the server's own connections to the shards
        (whole seconds: 18.16 takes no fractions), sent with every statement.
        ``insert_distributed_timeout`` bounds a sharded insert's wait for the
        shards (``insert_distributed_sync``)."""
        connect = max(1, math.ceil(self.connect_timeout))
        wait = max(1, math.ceil(self.timeout))
        return {
            "connect_timeout": connect,
            "receive_timeout": wait,
            "send_timeout": wait,
            "insert_distributed_timeout": wait,
        }

    def describe(self) -> str:
        """The URL with its password hidden."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = "" if self.user == "default" and not self.password else self.user
        if self.password:
            auth += ":***"
        tail = "" if self.cluster is None else f"?cluster={self.cluster}"
        return f"clickhouse://{auth + '@' if auth else ''}{host}:{self.port}/{self.database}{tail}"


def _fail(text: str, problem: str) -> LezaConfigError:
    return LezaConfigError(f"storage URL {text!r}: {problem} (expected {EXAMPLE})")


def _redacted(text: str) -> str:
    scheme, _, rest = text.partition("://")
    auth, at, tail = rest.rpartition("@")
    if not at or ":" not in auth:
        return text
    return f"{scheme}://{auth.partition(':')[0]}:***@{tail}"


def parse_clickhouse_url(text: str) -> ClickHouseURL:
    """Check a ``clickhouse://`` URL; :class:`LezaConfigError` naming what is wrong."""
    shown = _redacted(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a port out of range or not a number, a bad IPv6 host
        raise _fail(shown, f"{exc}") from None
    if parts.scheme.lower() != "clickhouse":
        raise _fail(shown, "the scheme must be clickhouse://")
    if not parts.hostname:
        raise _fail(shown, "names no host")
    if port == 0:
        raise _fail(shown, "port 0 is not a port")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise _fail(shown, "names no database (the path, e.g. /leza)")
    if not _DATABASE.fullmatch(database):
        raise _fail(
            shown, f"database {database!r} must be letters, digits and _ (not first), 64 at most"
        )
    if parts.fragment:
        raise _fail(shown, "takes no #fragment")
    options: dict[str, float] = {}
    cluster: str | None = None
    seen: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _PARAMS:
            raise _fail(
                shown, f"unknown query parameter {name!r} (known: {', '.join(sorted(_PARAMS))})"
            )
        given = name
        name = _ALIASES.get(name, name)
        if name in seen:
            also = "" if given == name else f" (as {given!r})"
            raise _fail(shown, f"query parameter {name!r} is given twice{also}")
        seen.add(name)
        if name == "cluster":
            if not _DATABASE.fullmatch(value):
                raise _fail(shown, f"cluster {value!r} must be letters, digits and _ (not first)")
            cluster = value
            continue
        # Plain decimals only: not "1e3", "+2", "1_0" or other scripts' digits.
        seconds = float(value) if _NUMBER.fullmatch(value) else math.nan
        most = _SECONDS[name]
        if not (math.isfinite(seconds) and 0 < seconds <= most):
            raise _fail(
                shown, f"{given} must be a number of seconds, more than 0 and at most "
                f"{most:g}, not {value!r}"
            )  # fmt: skip
        options[name] = seconds
    return ClickHouseURL(
        host=parts.hostname,
        port=DEFAULT_PORT if port is None else port,
        database=database,
        user=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
        cluster=cluster,
        **options,
    )


def driver() -> Any:
    """The ``clickhouse_driver`` module; a LezaConfigError naming the extra when missing."""
    try:
        import clickhouse_driver
    except ImportError:
        raise LezaConfigError(
            "storage clickhouse:// needs the clickhouse-driver package: "
            "pip install 'leza-middleware[clickhouse]'"
        ) from None
    return clickhouse_driver


def connect(url: ClickHouseURL, host: str | None = None, port: int | None = None) -> Any:
    """A ``clickhouse_driver.Client`` for ``url`` (connects on first use), or for
    one shard of its cluster (``host``, ``port``) with its credentials.

    No database on the connection: statements name ``database.table``, so
    setup can create the database before it exists. The URL's timeouts bound
    every wait of the client (connect, ping, each send or receive) and go to
    the server as settings of every statement (:meth:`ClickHouseURL.server_settings`).
    """
    return driver().Client(
        host=url.host if host is None else host,
        port=url.port if port is None else port,
        user=url.user,
        password=url.password,
        connect_timeout=url.connect_timeout,
        send_receive_timeout=url.timeout,
        sync_request_timeout=url.ping_timeout,
        settings=url.server_settings(),
        client_name="leza-middleware",
    )


_calls = threading.local()
_filter_lock = threading.Lock()
_filtered = False


class _OwnCalls(logging.Filter):
    """Drops clickhouse-driver's warnings raised by the storage's own statements."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or not getattr(_calls, "quiet", False)


@contextlib.contextmanager
def driver_quiet() -> Iterator[None]:
    """Statements run in this block do not log clickhouse-driver's warnings.

    The driver logs a warning with a traceback for every failed connect and
    ping ("Failed to connect to …"): during an outage that is a traceback per
    attempt. The error is raised to the storage anyway, and the recorder counts
    and reports it (once per outage), so those lines are dropped for Leza's
    own statements; the app's own use of the driver keeps its logging.
    """
    global _filtered
    if not _filtered:
        with _filter_lock:
            if not _filtered:
                logging.getLogger("clickhouse_driver.connection").addFilter(_OwnCalls())
                _filtered = True
    before = getattr(_calls, "quiet", False)
    _calls.quiet = True
    try:
        yield
    finally:
        _calls.quiet = before
