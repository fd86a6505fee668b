"""Write small, real MaxMind DB (``.mmdb``) files for tests.

Built with ``mmdb-writer`` + ``netaddr``: IPv6 trees with IPv4 at ``::/96`` (as
MaxMind's own databases), so IPv4 and IPv6 lookups both work. The expected
answers are exposed as :class:`GeoFixture` constants, so any test can assert on
them::

    from mmdb_factory import FRANKFURT, write_city_db

    db = write_city_db(tmp_path / "city.mmdb")
    assert resolver.lookup(FRANKFURT.ip) == FRANKFURT.geo

``81.2.69.192/26`` is nested inside London's ``81.2.69.0/24`` on purpose: the
database then splits London into ``81.2.69.0/25`` and ``81.2.69.128/26``, so
``81.2.69.142`` answers the network ``81.2.69.128/26``, as in MaxMind's data.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from leza_middleware.events import Geo

__all__ = [
    "ASN_NETWORKS",
    "CITY_FIXTURES",
    "FRANKFURT",
    "FRANKFURT_IP",
    "LINKOPING",
    "LINKOPING_IP",
    "LONDON",
    "LONDON_IP",
    "LONDON_LOW",
    "REGISTERED_ONLY",
    "REGISTERED_ONLY_IP",
    "SAN_DIEGO",
    "SAN_DIEGO_IP",
    "UNKNOWN_PUBLIC_IP",
    "WESTMINSTER",
    "WESTMINSTER_IP",
    "GeoFixture",
    "write_asn_db",
    "write_city_db",
    "write_country_db",
]


@dataclass(frozen=True)
class GeoFixture:
    """One network of the generated databases and what a lookup must answer."""

    network: str  # as inserted
    ip: str  # a probe address inside it
    key: str  # the database network the probe falls in (Geo.key)
    country_code: str
    country_name: str
    region_code: str = ""
    region_name: str = ""
    city: str = ""
    zip_code: str = ""
    time_zone: str = ""
    latitude: float | None = None
    longitude: float | None = None
    metro_code: int = 0
    continent: str = ""
    registered_only: bool = False  # only registered_country in the record
    also: tuple[str, ...] = field(default=())  # more addresses in the same network (key)

    @property
    def geo(self) -> Geo:
        """The Geo a City database lookup answers."""
        return Geo(
            key=self.key,
            country_code=self.country_code,
            country_name=self.country_name,
            region_code=self.region_code,
            region_name=self.region_name,
            city=self.city,
            zip_code=self.zip_code,
            time_zone=self.time_zone,
            latitude=self.latitude,
            longitude=self.longitude,
            metro_code=self.metro_code,
        )

    @property
    def country_geo(self) -> Geo:
        """The Geo a Country database lookup answers."""
        return Geo(key=self.key, country_code=self.country_code, country_name=self.country_name)

    def _country(self) -> dict[str, Any]:
        return {
            "geoname_id": zlib.crc32(self.country_code.encode()) % 10_000_000,
            "iso_code": self.country_code,
            "names": {"en": self.country_name},
        }

    def city_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"registered_country": self._country()}
        if self.registered_only:
            return record
        record["country"] = self._country()
        record["continent"] = {"code": self.continent, "names": {"en": self.continent}}
        if self.city:
            record["city"] = {"names": {"en": self.city, "de": self.city}}
        if self.region_code:
            record["subdivisions"] = [
                {"iso_code": self.region_code, "names": {"en": self.region_name}}
            ]
        location: dict[str, Any] = {"accuracy_radius": 20}
        if self.latitude is not None and self.longitude is not None:
            location["latitude"] = float(self.latitude)
            location["longitude"] = float(self.longitude)
        if self.time_zone:
            location["time_zone"] = self.time_zone
        if self.metro_code:
            location["metro_code"] = self.metro_code
        record["location"] = location
        if self.zip_code:
            record["postal"] = {"code": self.zip_code}
        return record

    def country_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"registered_country": self._country()}
        if not self.registered_only:
            record["country"] = self._country()
            record["continent"] = {"code": self.continent, "names": {"en": self.continent}}
        return record


LONDON = GeoFixture(
    network="81.2.69.0/24",
    ip="81.2.69.142",
    key="81.2.69.128/26",
    also=("81.2.69.150", "81.2.69.191"),
    country_code="GB",
    country_name="United Kingdom",
    region_code="ENG",
    region_name="England",
    city="London",
    zip_code="EC1A",
    time_zone="Europe/London",
    latitude=51.5142,
    longitude=-0.0931,
    continent="EU",
)
# The low half of London's /24 once the /26 below is carved out of it.
LONDON_LOW = replace(LONDON, ip="81.2.69.10", key="81.2.69.0/25", also=())
WESTMINSTER = GeoFixture(
    network="81.2.69.192/26",
    ip="81.2.69.200",
    key="81.2.69.192/26",
    country_code="GB",
    country_name="United Kingdom",
    region_code="ENG",
    region_name="England",
    city="Westminster",
    zip_code="SW1A",
    time_zone="Europe/London",
    latitude=51.4995,
    longitude=-0.1248,
    continent="EU",
)
LINKOPING = GeoFixture(
    network="89.160.20.0/24",
    ip="89.160.20.112",
    key="89.160.20.0/24",
    country_code="SE",
    country_name="Sweden",
    region_code="E",
    region_name="Östergötland County",
    city="Linköping",
    zip_code="582 20",
    time_zone="Europe/Stockholm",
    latitude=58.4167,
    longitude=15.6167,
    continent="EU",
)
FRANKFURT = GeoFixture(
    network="161.35.214.0/24",
    ip="161.35.214.167",
    key="161.35.214.0/24",
    also=("161.35.214.1",),
    country_code="DE",
    country_name="Germany",
    region_code="HE",
    region_name="Hesse",
    city="Frankfurt am Main",
    zip_code="60313",
    time_zone="Europe/Berlin",
    latitude=50.1188,
    longitude=8.6843,
    continent="EU",
)
SAN_DIEGO = GeoFixture(
    network="2001:480:10::/48",
    ip="2001:480:10::1",
    key="2001:480:10::/48",
    also=("2001:480:10:ffff::abcd",),
    country_code="US",
    country_name="United States",
    region_code="CA",
    region_name="California",
    city="San Diego",
    zip_code="92101",
    time_zone="America/Los_Angeles",
    latitude=32.7203,
    longitude=-117.1552,
    metro_code=825,
    continent="NA",
)
# A network known only by its registration (no country, no location): the
# country comes from registered_country, latitude/longitude are None.
REGISTERED_ONLY = GeoFixture(
    network="185.199.108.0/22",
    ip="185.199.109.153",
    key="185.199.108.0/22",
    country_code="FR",
    country_name="France",
    registered_only=True,
)

CITY_FIXTURES: tuple[GeoFixture, ...] = (
    LONDON,
    WESTMINSTER,
    LINKOPING,
    FRANKFURT,
    SAN_DIEGO,
    REGISTERED_ONLY,
)
# A public address in none of the networks above.
UNKNOWN_PUBLIC_IP = "9.9.9.9"

# Probe addresses as plain strings, for tests that only need an IP.
LONDON_IP = LONDON.ip  # "81.2.69.142" -> London GB, network 81.2.69.128/26
WESTMINSTER_IP = WESTMINSTER.ip
LINKOPING_IP = LINKOPING.ip  # "89.160.20.112" -> Linköping SE
FRANKFURT_IP = FRANKFURT.ip  # "161.35.214.167" -> Frankfurt am Main DE (HE, 60313)
SAN_DIEGO_IP = SAN_DIEGO.ip  # "2001:480:10::1" -> San Diego US
REGISTERED_ONLY_IP = REGISTERED_ONLY.ip

ASN_NETWORKS: dict[str, dict[str, Any]] = {
    "1.0.0.0/24": {"autonomous_system_number": 15169, "autonomous_system_organization": "Google"},
    "89.160.20.0/24": {
        "autonomous_system_number": 29518,
        "autonomous_system_organization": "Bredband2 AB",
    },
}


def _ordered(fixtures: tuple[GeoFixture, ...]) -> list[GeoFixture]:
    # mmdb-writer needs supernets before the subnets carved out of them.
    seen: dict[str, GeoFixture] = {}
    for fx in fixtures:
        seen.setdefault(fx.network, fx)
    return sorted(seen.values(), key=lambda fx: int(fx.network.rsplit("/", 1)[1]))


class _DatedWriter(MMDBWriter):  # type: ignore[misc]
    """An MMDBWriter whose metadata carries a given build time (it stamps "now")."""

    build_epoch: int | None = None

    def _build_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = super()._build_meta()
        if self.build_epoch is not None:
            meta["build_epoch"] = self.build_epoch
        return meta


def _write(
    path: str | os.PathLike[str],
    database_type: str,
    records: list[tuple[str, dict[str, Any]]],
    ip_version: int,
    build_epoch: int | None = None,
) -> Path:
    writer = _DatedWriter(
        ip_version=ip_version,
        database_type=database_type,
        languages=["en"],
        description={"en": f"leza-middleware test {database_type}"},
        ipv4_compatible=ip_version == 6,
    )
    writer.build_epoch = build_epoch
    for network, record in records:
        if ip_version == 4 and ":" in network:
            continue
        writer.insert_network(IPSet([network]), record)
    out = Path(path)
    writer.to_db_file(os.fspath(out))
    return out


def write_city_db(
    path: str | os.PathLike[str],
    *,
    ip_version: int = 6,
    database_type: str = "GeoLite2-City",
    fixtures: tuple[GeoFixture, ...] = CITY_FIXTURES,
    build_epoch: int | None = None,
) -> Path:
    """A City database holding ``fixtures`` (IPv6 fixtures skipped when ip_version=4),
    built at ``build_epoch`` (Unix seconds; default now)."""
    records = [(fx.network, fx.city_record()) for fx in _ordered(fixtures)]
    return _write(path, database_type, records, ip_version, build_epoch)


def write_country_db(
    path: str | os.PathLike[str],
    *,
    ip_version: int = 6,
    database_type: str = "GeoLite2-Country",
    fixtures: tuple[GeoFixture, ...] = CITY_FIXTURES,
) -> Path:
    """A Country database with the same networks as :func:`write_city_db`."""
    records = [(fx.network, fx.country_record()) for fx in _ordered(fixtures)]
    return _write(path, database_type, records, ip_version)


def write_asn_db(path: str | os.PathLike[str], *, database_type: str = "GeoLite2-ASN") -> Path:
    """An ASN database: a valid .mmdb of the wrong schema for geo."""
    return _write(path, database_type, list(ASN_NETWORKS.items()), 6)
