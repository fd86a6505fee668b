"""IP → :class:`~leza_middleware.events.Geo` from a MaxMind City or Country database.

Runs on the recorder thread (a query thread may call it too; maxminddb readers
are thread-safe). A lookup never raises: private, reserved and invalid
addresses answer ``None`` without touching the database, and a corrupt record
answers ``None`` and is counted in ``stats()["errors"]``.

Two bounded caches keep the per-event cost near a dict lookup:

* IP string → ``Geo | None`` (evicts the oldest insertion, no per-hit bookkeeping);
* network CIDR → ``Geo``, so every IP of one database network shares one
  immutable ``Geo`` object and storage writes it once.

A database given explicitly is checked at open time: missing, unreadable, not a
MaxMind DB, of the wrong schema (ASN, Anonymous-IP, …) or detectably corrupt
(a handful of probe lookups plus a walk over the first records) raises
:class:`~leza_middleware.errors.LezaConfigError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import ipaddress
import itertools
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Literal

import maxminddb

from ..errors import LezaConfigError
from ..events import Geo
from .cache import bounded_put
from .text import clean

__all__ = ["GeoResolver"]

logger = logging.getLogger("leza_middleware")

_DEFAULT_MODULE = "_maxminddb_geolite2"
_ACCEPTED_TYPES = ("City", "Country")

# Probe addresses looked up at open time: well-known public hosts and the
# networks MaxMind's own test databases populate, so a broken data section is
# likely to be hit. Any answer is fine; only an exception is a failure.
_PROBE_V4 = (
    "1.1.1.1",
    "8.8.8.8",
    "81.2.69.142",
    "89.160.20.112",
    "161.35.214.167",
    "175.16.199.1",
    "216.160.83.56",
    "2.125.160.216",
)
_PROBE_V6 = (
    "2001:480:10::1",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "2a02:d300::1",
    "2002:5102:458e::1",
)
# Records decoded while walking the tree at open time (cheap: ~1 ms on GeoLite2-City).
_PROBE_RECORDS = 64

# Cache sentinel of the cached values' own type (None is a cached answer).
_MISS = Geo(key="\x00miss")


def find_default_database() -> str | None:
    """Path of the GeoLite2-City database of ``maxminddb-geolite2``, if installed.

    Imports only ``_maxminddb_geolite2`` (a path helper), never ``geolite2``,
    which opens a reader on import-time globals and uses deprecated APIs.
    """
    try:
        if importlib.util.find_spec(_DEFAULT_MODULE) is None:
            return None
        module = importlib.import_module(_DEFAULT_MODULE)
        path = module.geolite2_database()
    except Exception:
        return None
    if isinstance(path, str) and os.path.isfile(path):
        return path
    return None


# Longest stored geo name (city names run to ~60 characters).
_MAX_NAME = 256


def _text(obj: Any, key: str) -> str:
    """``obj[key]`` when it is a non-empty string, else ``""``.

    Cleaned like request text: a crafted or corrupt database must not put
    control characters into storage either (once per network: memoised).
    """
    if isinstance(obj, Mapping):
        value = obj.get(key)
        if isinstance(value, str):
            return clean(value, _MAX_NAME)
    return ""


def _name(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return _text(obj.get("names"), "en")
    return ""


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _network_key(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix_len: int) -> str:
    """CIDR of the database network ``addr`` fell in, in ``addr``'s own family.

    maxminddb reports the prefix of an IPv4 lookup in an IPv6 database relative
    to the IPv4 subtree (the ``::/96`` mapping); a reader that reported it
    relative to the 128-bit tree (or a tree whose IPv4 subtree is shallower than
    96 bits) is folded back into 0..32, so the key is always a proper IPv4 CIDR.
    """
    if addr.version == 4:
        if prefix_len > 32:
            prefix_len -= 96
        prefix_len = min(max(prefix_len, 0), 32)
        host_bits = 32 - prefix_len
        base = (int(addr) >> host_bits) << host_bits
        return f"{ipaddress.IPv4Address(base)}/{prefix_len}"
    prefix_len = min(max(prefix_len, 0), 128)
    host_bits = 128 - prefix_len
    base = (int(addr) >> host_bits) << host_bits
    return f"{ipaddress.IPv6Address(base)}/{prefix_len}"


def _public(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address to look up, or None for invalid and non-public addresses.

    IPv4-mapped IPv6 (``::ffff:1.2.3.4``) is looked up as IPv4. An IPv6 zone id
    (``%eth0``) is dropped. Private, loopback, link-local, reserved, multicast
    and unspecified addresses are never in a GeoIP database.
    """
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            addr = mapped
        elif addr.scope_id is not None:
            addr = ipaddress.IPv6Address(int(addr))
    if (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_reserved
        or addr.is_multicast
        or addr.is_unspecified
    ):
        return None
    return addr


def _probe(reader: maxminddb.Reader, ip_version: int) -> None:
    """Raise whatever the reader raises on a detectably broken file.

    Walks the first records of the tree (decoding each) and looks up a few
    well-known addresses. Catches a corrupt search tree (MaxMind's
    ``broken-search-tree`` test file fails on the walk, while its lookups
    succeed) and a corrupt data section (``Broken-Double-Format``: the first
    records decode, lookups of populated networks fail). Corruption deeper in a
    file can only be found by the lookups that reach it; those answer None.
    """
    for _network, record in itertools.islice(iter(reader), _PROBE_RECORDS):
        if not isinstance(record, Mapping):
            raise TypeError(f"record is a {type(record).__name__}, not a map")
    probes = _PROBE_V4 + _PROBE_V6 if ip_version == 6 else _PROBE_V4
    for ip in probes:
        found, _prefix = reader.get_with_prefix_len(ip)
        if found is not None and not isinstance(found, Mapping):
            raise TypeError(f"record for {ip} is a {type(found).__name__}, not a map")


class GeoResolver:
    """Thread-safe, cached City/Country lookups. Build it with :meth:`open`."""

    __slots__ = (
        "_build_epoch",
        "_cache",
        "_cache_size",
        "_city_shape",
        "_database_type",
        "_errors",
        "_hits",
        "_ip_version",
        "_lock",
        "_misses",
        "_net_cache_size",
        "_networks",
        "_path",
        "_reader",
        "_warned",
    )

    def __init__(
        self,
        reader: maxminddb.Reader | None,
        path: str | None,
        *,
        cache_size: int = 8192,
    ) -> None:
        """Wrap an open reader (``None``: a disabled resolver). Prefer :meth:`open`."""
        self._reader = reader
        self._path = path
        if reader is not None:
            meta = reader.metadata()
            self._database_type = str(meta.database_type)
            self._build_epoch = int(meta.build_epoch)
            self._ip_version = int(meta.ip_version)
        else:
            self._database_type = ""
            self._build_epoch = 0
            self._ip_version = 0
        self._city_shape = "City" in self._database_type
        self._cache: dict[str, Geo | None] = {}
        self._cache_size = cache_size
        self._networks: dict[str, Geo] = {}
        self._net_cache_size = max(cache_size, 256)
        self._hits = 0
        self._misses = 0
        self._errors = 0
        self._warned = False
        self._lock = threading.Lock()

    # -- construction -------------------------------------------------------------

    @classmethod
    def disabled(cls) -> GeoResolver:
        """A resolver that knows nothing (geo turned off on purpose; no warning)."""
        return cls(None, None)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | Literal[False] | None,
        *,
        cache_size: int = 8192,
    ) -> GeoResolver:
        """Open a GeoIP2/GeoLite2 City or Country ``.mmdb`` file.

        ``path=None`` uses the GeoLite2-City database of the optional
        ``maxminddb-geolite2`` package (``pip install leza-middleware[geolite2]``);
        without it, geo is disabled and one warning is logged. ``path=False``
        disables geo silently.

        Raises :class:`LezaConfigError` when an explicit file is missing,
        unreadable, not a MaxMind DB, of another schema, or detectably corrupt.
        """
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise LezaConfigError(f"GeoIP cache_size must be an integer >= 0, got {cache_size!r}")
        if path is False:
            return cls.disabled()
        if path is None:
            default = find_default_database()
            if default is None:
                logger.warning(
                    "GeoIP lookups are disabled: no GeoIP database is configured and the "
                    "default GeoLite2 database is not installed. To enable geo, pass "
                    "geoip_db='/path/to/GeoLite2-City.mmdb' (a City or Country database) "
                    "or install it with: pip install 'leza-middleware[geolite2]'"
                )
                return cls(None, None, cache_size=cache_size)
            try:
                return cls._open_file(default, cache_size)
            except LezaConfigError as exc:
                # The user did not ask for this file: a broken optional package
                # must not stop the app; say so once and run without geo.
                logger.warning("GeoIP lookups are disabled: default database unusable: %s", exc)
                return cls(None, None, cache_size=cache_size)
        if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
            raise LezaConfigError(
                f"geoip_db must be a path to a .mmdb file, None or False, got {path!r}"
            )
        text = os.fspath(path)
        if not isinstance(text, str) or not text.strip():
            raise LezaConfigError(
                f"geoip_db {path!r} is an empty path; pass None for the default database "
                "or False to disable geo"
            )
        return cls._open_file(text, cache_size)

    @classmethod
    def _open_file(cls, path: str, cache_size: int) -> GeoResolver:
        where = f"GeoIP database '{path}'"
        if not os.path.exists(path):
            raise LezaConfigError(f"{where}: file not found")
        if os.path.isdir(path):
            raise LezaConfigError(f"{where}: is a directory, not a .mmdb file")
        try:
            reader = maxminddb.open_database(path, maxminddb.MODE_AUTO)
        except PermissionError as exc:
            raise LezaConfigError(f"{where}: cannot be read ({exc.strerror})") from exc
        except OSError as exc:
            raise LezaConfigError(f"{where}: cannot be read ({exc})") from exc
        except Exception as exc:  # InvalidDatabaseError, ValueError, ...
            raise LezaConfigError(
                f"{where}: not a valid MaxMind DB (.mmdb) file, or corrupt ({exc})"
            ) from exc
        try:
            meta = reader.metadata()
            db_type = str(meta.database_type)
            if not any(kind in db_type for kind in _ACCEPTED_TYPES):
                raise LezaConfigError(
                    f"{where}: is a {db_type!r} database, which holds no location; "
                    "use a GeoIP2/GeoLite2 City or Country database"
                )
            try:
                _probe(reader, int(meta.ip_version))
            except Exception as exc:
                raise LezaConfigError(
                    f"{where}: is corrupt (a probe lookup failed: {exc})"
                ) from exc
        except BaseException:
            reader.close()
            raise
        return cls(reader, path, cache_size=cache_size)

    # -- properties ---------------------------------------------------------------

    @property
    def path(self) -> str | None:
        """The database file, or None when geo is disabled."""
        return self._path

    @property
    def database_type(self) -> str:
        """E.g. ``"GeoLite2-City"``; ``""`` when disabled."""
        return self._database_type

    @property
    def build_epoch(self) -> int:
        """Build time of the database (Unix seconds); 0 when disabled."""
        return self._build_epoch

    @property
    def enabled(self) -> bool:
        return self._reader is not None

    def stats(self) -> dict[str, int]:
        return {
            "hits": self._hits,
            "misses": self._misses,
            "errors": self._errors,
            "size": len(self._cache),
        }

    def __repr__(self) -> str:
        if self._reader is None:
            return "GeoResolver(disabled)"
        return f"GeoResolver({self._path!r}, {self._database_type!r})"

    # -- lookups ------------------------------------------------------------------

    def lookup(self, ip: str) -> Geo | None:
        """The :class:`Geo` of ``ip``'s database network, or None. Never raises."""
        if self._reader is None:
            return None
        try:
            geo = self._cache.get(ip, _MISS)
            if geo is not _MISS:
                self._hits += 1
                return geo
            self._misses += 1
            geo = self._resolve(ip) if isinstance(ip, str) else None
            if self._cache_size:
                bounded_put(self._cache, ip, geo, self._cache_size)
            return geo
        except Exception:  # unhashable input and the like
            self._errors += 1
            return None

    def _resolve(self, ip: str) -> Geo | None:
        addr = _public(ip)
        if addr is None:
            return None
        reader = self._reader
        if reader is None or (addr.version == 6 and self._ip_version != 6):
            return None
        try:
            record, prefix_len = reader.get_with_prefix_len(addr)
            if record is None:
                return None
            key = _network_key(addr, prefix_len)
            geo = self._networks.get(key)
            if geo is None:
                built = self._build(key, record)
                with self._lock:
                    geo = self._networks.get(key)
                    if geo is None:
                        bounded_put(self._networks, key, built, self._net_cache_size)
                        geo = built
            return geo
        except Exception as exc:
            self._errors += 1
            if not self._warned:
                self._warned = True
                logger.warning(
                    "GeoIP lookup failed in %r (corrupt database?); this and later "
                    "failures answer no geo and are counted in stats()['errors']: %s",
                    self._path,
                    exc,
                )
            return None

    def _build(self, key: str, record: Any) -> Geo:
        if not isinstance(record, Mapping):
            raise TypeError(f"record is a {type(record).__name__}, not a map")
        country = record.get("country")
        if not _text(country, "iso_code"):
            country = record.get("registered_country")
        country_code = _text(country, "iso_code")
        country_name = _name(country)
        if not self._city_shape:
            return Geo(key=key, country_code=country_code, country_name=country_name)
        subdivisions = record.get("subdivisions")
        first = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else None
        location = record.get("location")
        if not isinstance(location, Mapping):
            location = {}
        metro = location.get("metro_code")
        return Geo(
            key=key,
            country_code=country_code,
            country_name=country_name,
            region_code=_text(first, "iso_code"),
            region_name=_name(first),
            city=_name(record.get("city")),
            zip_code=_text(record.get("postal"), "code"),
            time_zone=_text(location, "time_zone"),
            latitude=_float(location.get("latitude")),
            longitude=_float(location.get("longitude")),
            metro_code=metro if isinstance(metro, int) and not isinstance(metro, bool) else 0,
        )

    def close(self) -> None:
        """Release the database; later lookups answer None."""
        reader, self._reader = self._reader, None
        self._cache.clear()
        self._networks.clear()
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()
