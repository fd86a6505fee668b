"""The ClickHouse backend's URL, checked without connecting, and its driver,
imported only when a ClickHouse storage is opened.

``clickhouse://[user[:password]@]host[:port]/database[?connect_timeout=S&timeout=S&cluster=NAME]``:
the native protocol (port 9000 by default) through ``clickhouse-driver``
(the ``[clickhouse]`` extra). ``cluster``: shard over that cluster of the
server's ``<remote_servers>`` through ``Distributed`` tables.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import LezaConfigError

__all__ = ["ClickHouseURL", "connect", "parse_clickhouse_url"]

EXAMPLE = "clickhouse://host:9000/leza"
DEFAULT_PORT = 9000
#: Database names are spliced into statements (quoted): a plain identifier only.
_DATABASE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: Query parameters in seconds (> 0), and ``cluster``.
_PARAMS = {"connect_timeout", "timeout", "cluster"}


@dataclass(frozen=True, slots=True)
class ClickHouseURL:
    host: str
    port: int
    database: str
    user: str = "default"
    password: str = ""
    connect_timeout: float = 10.0
    timeout: float = 300.0
    cluster: str | None = None  # shard over this cluster (Distributed tables)

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
        if name in seen:
            raise _fail(shown, f"query parameter {name!r} is given twice")
        seen.add(name)
        if name == "cluster":
            if not _DATABASE.fullmatch(value):
                raise _fail(shown, f"cluster {value!r} must be letters, digits and _ (not first)")
            cluster = value
            continue
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and 0 < seconds <= 86_400):
            raise _fail(shown, f"{name} must be a number of seconds in (0, 86400], not {value!r}")
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
    setup can create the database before it exists.
    """
    return driver().Client(
        host=url.host if host is None else host,
        port=url.port if port is None else port,
        user=url.user,
        password=url.password,
        connect_timeout=url.connect_timeout,
        send_receive_timeout=url.timeout,
        client_name="leza-middleware",
    )
