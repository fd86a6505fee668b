"""GeoResolver: real .mmdb files written by mmdb_factory, plus MaxMind's test files."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from mmdb_factory import (
    CITY_FIXTURES,
    FRANKFURT,
    LINKOPING,
    LONDON,
    LONDON_LOW,
    REGISTERED_ONLY,
    SAN_DIEGO,
    UNKNOWN_PUBLIC_IP,
    WESTMINSTER,
    GeoFixture,
    write_asn_db,
    write_city_db,
    write_country_db,
)

from leza_middleware.enrich import geo as geo_module
from leza_middleware.enrich.geo import GeoResolver
from leza_middleware.errors import LezaConfigError
from leza_middleware.events import Geo

SHARED_GEOIP = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "geoip"


def shared(name: str) -> Path:
    path = SHARED_GEOIP / name
    if not path.is_file():
        pytest.skip(f"shared GeoIP test data not available: {path}")
    return path


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb")


@pytest.fixture(scope="module")
def country_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_country_db(tmp_path_factory.mktemp("geo") / "country.mmdb")


@pytest.fixture
def city(city_db: Path) -> Iterator[GeoResolver]:
    resolver = GeoResolver.open(city_db)
    yield resolver
    resolver.close()


class ExplodingReader:
    """Stands in for the maxminddb reader: any use is recorded and fails."""

    def __init__(self) -> None:
        self.calls = 0

    def get_with_prefix_len(self, ip: Any) -> Any:
        self.calls += 1
        raise maxminddb.InvalidDatabaseError("corrupt data section (simulated)")

    def close(self) -> None:
        pass


# -- City and Country lookups ---------------------------------------------------------------------


@pytest.mark.parametrize("fx", CITY_FIXTURES, ids=lambda fx: fx.ip)
def test_city_lookup(city: GeoResolver, fx: GeoFixture) -> None:
    assert city.lookup(fx.ip) == fx.geo


def test_city_fields_frankfurt(city: GeoResolver) -> None:
    geo = city.lookup(FRANKFURT.ip)
    assert geo is not None
    assert geo.to_dict(FRANKFURT.ip) == {
        "ip": "161.35.214.167",
        "country_code": "DE",
        "country_name": "Germany",
        "region_code": "HE",
        "region_name": "Hesse",
        "city": "Frankfurt am Main",
        "zip_code": "60313",
        "time_zone": "Europe/Berlin",
        "latitude": 50.1188,
        "longitude": 8.6843,
        "metro_code": 0,
        "network": "161.35.214.0/24",
    }


def test_ipv6_lookup_and_metro_code(city: GeoResolver) -> None:
    geo = city.lookup(SAN_DIEGO.ip)
    assert geo is not None
    assert (geo.key, geo.city, geo.metro_code) == ("2001:480:10::/48", "San Diego", 825)


def test_registered_country_fallback(city: GeoResolver) -> None:
    geo = city.lookup(REGISTERED_ONLY.ip)
    assert geo is not None
    assert (geo.country_code, geo.city, geo.latitude, geo.longitude) == ("FR", "", None, None)


@pytest.mark.parametrize("fx", CITY_FIXTURES, ids=lambda fx: fx.ip)
def test_country_db_gives_country_fields_only(country_db: Path, fx: GeoFixture) -> None:
    resolver = GeoResolver.open(country_db)
    assert resolver.database_type == "GeoLite2-Country"
    assert resolver.lookup(fx.ip) == fx.country_geo


def test_not_found_is_none(city: GeoResolver) -> None:
    assert city.lookup(UNKNOWN_PUBLIC_IP) is None
    assert city.lookup(UNKNOWN_PUBLIC_IP) is None
    assert city.stats() == {"hits": 1, "misses": 1, "errors": 0, "size": 1}


# -- network keys ---------------------------------------------------------------------------------


def test_nested_network_keys(city: GeoResolver) -> None:
    # London's /24 minus Westminster's /26 leaves 81.2.69.0/25 and 81.2.69.128/26.
    high, low, west = (
        city.lookup(LONDON.ip),
        city.lookup(LONDON_LOW.ip),
        city.lookup(WESTMINSTER.ip),
    )
    assert high is not None
    assert low is not None
    assert west is not None
    assert (high.key, low.key, west.key) == ("81.2.69.128/26", "81.2.69.0/25", "81.2.69.192/26")
    assert high.city == low.city == "London"
    assert high is not low


def test_ipv4_mapped_ipv6_gives_an_ipv4_key(city: GeoResolver) -> None:
    geo = city.lookup("::ffff:81.2.69.142")
    assert geo == LONDON.geo
    assert geo is city.lookup(LONDON.ip)


def test_zone_id_is_dropped(city: GeoResolver) -> None:
    assert city.lookup("2001:480:10::1%eth0") == SAN_DIEGO.geo


def test_ipv4_only_database(tmp_path: Path) -> None:
    resolver = GeoResolver.open(write_city_db(tmp_path / "v4.mmdb", ip_version=4))
    assert resolver.lookup(LINKOPING.ip) == LINKOPING.geo
    assert resolver.lookup(SAN_DIEGO.ip) is None
    assert resolver.stats()["errors"] == 0


@pytest.mark.parametrize(
    ("ip", "prefix", "key"),
    [
        ("81.2.69.142", 26, "81.2.69.128/26"),
        ("81.2.69.142", 122, "81.2.69.128/26"),  # a reader reporting the 128-bit depth
        ("81.2.69.142", 0, "0.0.0.0/0"),
        ("81.2.69.142", -5, "0.0.0.0/0"),
        ("81.2.69.142", 32, "81.2.69.142/32"),
        ("2001:480:10::1", 48, "2001:480:10::/48"),
        ("2001:480:10::1", 200, "2001:480:10::1/128"),
    ],
)
def test_network_key_arithmetic(ip: str, prefix: int, key: str) -> None:
    import ipaddress

    assert geo_module._network_key(ipaddress.ip_address(ip), prefix) == key


# -- cache ----------------------------------------------------------------------------------------


def test_one_geo_object_per_network(city: GeoResolver) -> None:
    first = city.lookup(LONDON.ip)
    assert first is not None
    for ip in LONDON.also:
        assert city.lookup(ip) is first
    assert city.lookup(LONDON.ip) is first
    stats = city.stats()
    assert stats["hits"] == 1
    assert stats["misses"] == 1 + len(LONDON.also)


def test_ip_cache_is_bounded_and_evicts_oldest(city_db: Path) -> None:
    resolver = GeoResolver.open(city_db, cache_size=2)
    resolver.lookup(LONDON.ip)
    resolver.lookup(FRANKFURT.ip)
    resolver.lookup(LINKOPING.ip)  # evicts LONDON.ip
    assert resolver.stats()["size"] == 2
    resolver.lookup(LINKOPING.ip)
    assert resolver.stats()["hits"] == 1
    resolver.lookup(LONDON.ip)
    assert resolver.stats() == {"hits": 1, "misses": 4, "errors": 0, "size": 2}


def test_network_sharing_survives_ip_cache_eviction(city_db: Path) -> None:
    resolver = GeoResolver.open(city_db, cache_size=1)
    first = resolver.lookup(FRANKFURT.ip)
    assert resolver.lookup(FRANKFURT.also[0]) is first


def test_cache_disabled(city_db: Path) -> None:
    resolver = GeoResolver.open(city_db, cache_size=0)
    assert resolver.lookup(LONDON.ip) is resolver.lookup(LONDON.ip)
    assert resolver.stats()["size"] == 0


@pytest.mark.parametrize("size", [-1, 1.5, "10", True])
def test_bad_cache_size(city_db: Path, size: Any) -> None:
    with pytest.raises(LezaConfigError, match="cache_size"):
        GeoResolver.open(city_db, cache_size=size)


# -- addresses never looked up --------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.10.1",
        "224.0.0.251",
        "240.0.0.1",
        "0.0.0.0",
        "::",
        "::1",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "161.35.614.165",
        "not-an-ip",
        "",
        "1.2.3.4.5",
        "01.2.3.4",
        " ",
        "81.2.69.142/24",
    ],
)
def test_non_public_and_invalid_ips_skip_the_database(city: GeoResolver, ip: str) -> None:
    spy = ExplodingReader()
    city._reader = spy  # type: ignore[assignment]
    assert city.lookup(ip) is None
    assert spy.calls == 0
    assert city.stats()["errors"] == 0


@pytest.mark.parametrize("value", [None, 42, b"81.2.69.142", ["81.2.69.142"]])
def test_non_string_input_never_raises(city: GeoResolver, value: Any) -> None:
    assert city.lookup(value) is None


# -- failures at lookup time ----------------------------------------------------------------------


def test_corrupt_record_is_counted_not_raised(
    city: GeoResolver, caplog: pytest.LogCaptureFixture
) -> None:
    spy = ExplodingReader()
    city._reader = spy  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="leza_middleware"):
        assert city.lookup(FRANKFURT.ip) is None
        assert city.lookup(LONDON.ip) is None
    assert spy.calls == 2
    assert city.stats()["errors"] == 2
    warnings = [r for r in caplog.records if r.name == "leza_middleware"]
    assert len(warnings) == 1  # the first failure is logged, later ones only counted


def test_close(city_db: Path) -> None:
    resolver = GeoResolver.open(city_db)
    assert resolver.lookup(LONDON.ip) is not None
    resolver.close()
    resolver.close()
    assert not resolver.enabled
    assert resolver.lookup(LONDON.ip) is None


def test_properties(city_db: Path) -> None:
    resolver = GeoResolver.open(city_db)
    assert resolver.enabled
    assert resolver.path == str(city_db)
    assert resolver.database_type == "GeoLite2-City"
    assert isinstance(resolver.build_epoch, int)
    assert resolver.build_epoch > 1_600_000_000
    assert "GeoLite2-City" in repr(resolver)


def test_concurrent_lookups(city_db: Path) -> None:
    resolver = GeoResolver.open(city_db, cache_size=3)
    ips = [fx.ip for fx in CITY_FIXTURES] + [UNKNOWN_PUBLIC_IP, "10.0.0.1"]
    expected = {ip: resolver.lookup(ip) for ip in ips}
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(300):
                for ip in ips:
                    assert resolver.lookup(ip) == expected[ip]
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert resolver.stats()["errors"] == 0


# -- configuration errors -------------------------------------------------------------------------


def _assert_config_error(path: Any, *words: str) -> None:
    with pytest.raises(LezaConfigError) as info:
        GeoResolver.open(path)
    message = str(info.value)
    assert os.fspath(path) in message
    for word in words:
        assert word in message


def test_missing_file(tmp_path: Path) -> None:
    _assert_config_error(tmp_path / "nope.mmdb", "not found")


def test_directory(tmp_path: Path) -> None:
    _assert_config_error(tmp_path, "directory")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "city.mmdb"
    path.write_text("this is not a MaxMind database\n" * 50)
    _assert_config_error(path, "not a valid MaxMind DB")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mmdb"
    path.write_bytes(b"")
    _assert_config_error(path, "MaxMind DB")


def test_truncated_file(tmp_path: Path, city_db: Path) -> None:
    path = tmp_path / "truncated.mmdb"
    path.write_bytes(city_db.read_bytes()[: city_db.stat().st_size // 2])
    _assert_config_error(path, "MaxMind DB")


def _tree_and_metadata(data: bytes, path: Path) -> tuple[int, int]:
    reader = maxminddb.open_database(os.fspath(path))
    meta = reader.metadata()
    reader.close()
    tree_end = meta.node_count * meta.record_size * 2 // 8 + 16
    return tree_end, data.rfind(b"\xab\xcd\xefMaxMind.com")


def test_corrupt_data_section_fails_at_open(tmp_path: Path, city_db: Path) -> None:
    data = bytearray(city_db.read_bytes())
    start, end = _tree_and_metadata(bytes(data), city_db)
    data[start:end] = b"\xff" * (end - start)
    path = tmp_path / "corrupt-data.mmdb"
    path.write_bytes(bytes(data))
    _assert_config_error(path, "corrupt")


def test_cut_data_section_fails_at_open(tmp_path: Path, city_db: Path) -> None:
    data = city_db.read_bytes()
    start, end = _tree_and_metadata(data, city_db)
    path = tmp_path / "cut-data.mmdb"
    path.write_bytes(data[: start + 50] + data[end:])
    _assert_config_error(path, "corrupt")


def test_unreadable_file(tmp_path: Path, city_db: Path) -> None:
    path = tmp_path / "secret.mmdb"
    path.write_bytes(city_db.read_bytes())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running with privileges that read any file (root)")
        _assert_config_error(path, "cannot be read")
    finally:
        path.chmod(0o600)


def test_asn_database_is_the_wrong_schema(tmp_path: Path) -> None:
    _assert_config_error(write_asn_db(tmp_path / "asn.mmdb"), "GeoLite2-ASN", "City or Country")


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_path(bad: str) -> None:
    with pytest.raises(LezaConfigError, match="empty path"):
        GeoResolver.open(bad)


@pytest.mark.parametrize("bad", [42, True, b"/tmp/x.mmdb"])
def test_path_of_wrong_type(bad: Any) -> None:
    with pytest.raises(LezaConfigError, match="geoip_db"):
        GeoResolver.open(bad)


def test_pathlike_is_accepted(city_db: Path) -> None:
    assert GeoResolver.open(Path(city_db)).lookup(LONDON.ip) == LONDON.geo


# -- the default database -------------------------------------------------------------------------


def test_default_database_when_installed(caplog: pytest.LogCaptureFixture) -> None:
    if geo_module.find_default_database() is None:
        pytest.skip("maxminddb-geolite2 is not installed")
    with caplog.at_level(logging.WARNING, logger="leza_middleware"):
        resolver = GeoResolver.open(None)
    assert not [r for r in caplog.records if r.name == "leza_middleware"]
    assert resolver.enabled
    assert "City" in resolver.database_type
    assert resolver.path is not None
    assert resolver.path.endswith(".mmdb")
    google = resolver.lookup("8.8.8.8")
    assert google is not None
    assert google.country_code == "US"
    london = resolver.lookup("81.2.69.142")
    assert london is not None
    assert london.country_code == "GB"
    assert london.city
    resolver.close()


def test_default_database_missing_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(geo_module, "find_default_database", lambda: None)
    with caplog.at_level(logging.WARNING, logger="leza_middleware"):
        resolver = GeoResolver.open(None)
        assert resolver.lookup("8.8.8.8") is None
        assert resolver.lookup(FRANKFURT.ip) is None
    records = [r for r in caplog.records if r.name == "leza_middleware"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert records[0].levelno == logging.WARNING
    assert "disabled" in message
    assert "geoip_db" in message
    assert "leza-middleware[geolite2]" in message
    assert not resolver.enabled
    assert resolver.path is None
    assert resolver.database_type == ""
    assert resolver.build_epoch == 0
    assert resolver.stats() == {"hits": 0, "misses": 0, "errors": 0, "size": 0}


def test_finder_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geo_module, "_DEFAULT_MODULE", "_leza_no_such_module_")
    assert geo_module.find_default_database() is None


def test_unusable_default_database_disables_geo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    junk = tmp_path / "GeoLite2-City.mmdb"
    junk.write_text("junk")
    monkeypatch.setattr(geo_module, "find_default_database", lambda: str(junk))
    with caplog.at_level(logging.WARNING, logger="leza_middleware"):
        resolver = GeoResolver.open(None)
    assert not resolver.enabled
    assert len([r for r in caplog.records if r.name == "leza_middleware"]) == 1


def test_disabled_on_purpose_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="leza_middleware"):
        for resolver in (GeoResolver.open(False), GeoResolver.disabled()):
            assert not resolver.enabled
            assert resolver.lookup("8.8.8.8") is None
    assert not [r for r in caplog.records if r.name == "leza_middleware"]


# -- MaxMind's own test databases (optional: /work/shared/testdata/geoip) -------------------------


@pytest.mark.parametrize("name", ["GeoIP2-City-Test.mmdb", "GeoLite2-City-Test.mmdb"])
def test_maxmind_city_test_db(name: str) -> None:
    resolver = GeoResolver.open(shared(name))
    london = resolver.lookup("81.2.69.142")
    assert london is not None
    assert (london.country_code, london.city, london.region_code) == ("GB", "London", "ENG")
    assert london.time_zone == "Europe/London"
    assert london.key == "81.2.69.142/31"
    assert resolver.lookup("::ffff:81.2.69.142") is london
    san_diego = resolver.lookup("2001:480:10::1")
    assert san_diego is not None
    assert (san_diego.country_code, san_diego.city, san_diego.metro_code) == (
        "US",
        "San Diego",
        825,
    )
    assert san_diego.key.startswith("2001:480:")
    linkoping = resolver.lookup("89.160.20.112")
    assert linkoping is not None
    assert linkoping.city == "Linköping"
    assert resolver.lookup("1.1.1.1") is None
    assert resolver.stats()["errors"] == 0


def test_maxmind_country_test_db() -> None:
    resolver = GeoResolver.open(shared("GeoLite2-Country-Test.mmdb"))
    assert resolver.lookup("81.2.69.142") == Geo(
        key="81.2.69.142/31", country_code="GB", country_name="United Kingdom"
    )


@pytest.mark.parametrize(
    ("name", "db_type"),
    [("GeoLite2-ASN-Test.mmdb", "GeoLite2-ASN"), ("GeoIP2-Anonymous-IP-Test.mmdb", "Anonymous-IP")],
)
def test_maxmind_wrong_schema(name: str, db_type: str) -> None:
    _assert_config_error(shared(name), db_type, "City or Country")


def test_maxmind_broken_data_section_fails_at_open() -> None:
    # The file opens and its metadata is fine; decoding populated records fails.
    _assert_config_error(shared("GeoIP2-City-Test-Broken-Double-Format.mmdb"), "corrupt")


def test_maxmind_broken_search_tree() -> None:
    path = shared("MaxMind-DB-test-broken-search-tree-24.mmdb")
    # Its database_type is "Test", so the schema check refuses it first ...
    _assert_config_error(path, "'Test'")
    # ... and the open-time probe also catches the broken tree on its own:
    # its lookups succeed, walking the tree fails.
    reader = maxminddb.open_database(os.fspath(path), maxminddb.MODE_AUTO)
    try:
        with pytest.raises(maxminddb.InvalidDatabaseError, match="search tree"):
            geo_module._probe(reader, reader.metadata().ip_version)
    finally:
        reader.close()
