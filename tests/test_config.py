"""Configuration errors: every bad setting fails at ``Leza(...)`` with a specific message.

Each case is built through the public constructor (keyword arguments, then the
same through ``LEZA_*`` environment variables) and must raise
:class:`LezaConfigError` naming the setting or the offending value, never later
at request time. Good values, overrides and the geo on/off switches are checked
alongside.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from mmdb_factory import FRANKFURT, write_asn_db, write_country_db

from leza_middleware import Leza, LezaConfigError

SHARED_GEOIP = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "geoip"

Build = Callable[..., Leza]


@pytest.fixture
def build() -> Iterator[Build]:
    """``Leza(**kwargs)``, with every instance that got built shut down afterwards."""
    made: list[Leza] = []

    def factory(**kwargs: Any) -> Leza:
        leza = Leza(**kwargs)
        made.append(leza)
        return leza

    yield factory
    for leza in made:
        leza.shutdown(timeout=2)


@pytest.fixture
def quiet(tmp_path: Path) -> dict[str, Any]:
    """Valid values for everything but the setting under test: no geo, no files."""
    return {
        "storage": "memory://",
        "geoip_db": False,
        "spill_dir": str(tmp_path / "spill"),
        "secret_key": "test-secret-0123456789abcdef",
    }


def config_error(build: Build, *fragments: str, **kwargs: Any) -> str:
    """Build with ``kwargs``; assert a LezaConfigError whose message holds every fragment."""
    with pytest.raises(LezaConfigError) as info:
        build(**kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def leza_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("leza_middleware") and r.levelno >= logging.WARNING
    ]


def shared(name: str) -> Path:
    path = SHARED_GEOIP / name
    if not path.is_file():
        pytest.skip(f"shared GeoIP test data not available: {path}")
    return path


def test_config_error_is_a_value_error() -> None:
    # Code that catches ValueError around configuration keeps working.
    assert issubclass(LezaConfigError, ValueError)


# ----------------------------------------------------------------------------- storage


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("redis://localhost:6379/0", ("unknown storage URL scheme 'redis'", "sqlite:///")),
        ("ftp://example.com/leza", ("unknown storage URL scheme 'ftp'",)),
        ("leza.db", ("'leza.db' is not a URL",)),
        ("postgresql+asyncpg://u@h/db", ("async driver 'asyncpg'",)),
        ("postgresql+nodriver://u@h/db", ("unknown postgresql driver 'nodriver'",)),
    ],
)
def test_bad_storage_url(
    build: Build, quiet: dict[str, Any], url: str, fragments: tuple[str, ...]
) -> None:
    config_error(build, *fragments, **{**quiet, "storage": url})


def test_storage_of_the_wrong_type(build: Build, quiet: dict[str, Any]) -> None:
    config_error(
        build, "storage must be a URL string or a Storage instance", **{**quiet, "storage": 42}
    )


def test_sqlite_in_a_missing_directory(build: Build, quiet: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    message = config_error(
        build, "does not exist", **{**quiet, "storage": f"sqlite:///{missing / 'leza.db'}"}
    )
    assert str(missing) in message
    assert not missing.exists()  # checked, not created


def test_sqlite_path_is_a_directory(build: Build, quiet: dict[str, Any], tmp_path: Path) -> None:
    config_error(
        build, str(tmp_path), "is a directory", **{**quiet, "storage": f"sqlite:///{tmp_path}"}
    )


def test_uninstalled_driver(build: Build, quiet: dict[str, Any]) -> None:
    # mysqlclient is not a dependency of any extra: really not installed.
    config_error(
        build,
        "'mysqldb' database driver",
        "not installed",
        "pip install mysqlclient",
        **{**quiet, "storage": "mysql+mysqldb://leza@db.internal/leza"},
    )


def test_uninstalled_postgres_driver_names_the_extra(
    build: Build, quiet: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    message = config_error(
        build,
        "'psycopg' database driver",
        "not installed",
        "leza-middleware[postgres]",
        **{**quiet, "storage": "postgresql://leza:s3cret@127.0.0.1:9/leza"},
    )
    assert "s3cret" not in message


# ----------------------------------------------------------------------------- GeoIP


def corrupt_data_section(source: Path, target: Path) -> Path:
    """``source`` with its data section overwritten: opens fine, records do not decode."""
    data = bytearray(source.read_bytes())
    reader = maxminddb.open_database(os.fspath(source))
    meta = reader.metadata()
    reader.close()
    start = meta.node_count * meta.record_size * 2 // 8 + 16
    end = data.rfind(b"\xab\xcd\xefMaxMind.com")
    data[start:end] = b"\xff" * (end - start)
    target.write_bytes(bytes(data))
    return target


def test_geoip_missing_file(build: Build, quiet: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "GeoLite2-City.mmdb"
    config_error(build, f"'{path}'", "file not found", **{**quiet, "geoip_db": str(path)})


def test_geoip_directory(build: Build, quiet: dict[str, Any], tmp_path: Path) -> None:
    config_error(build, f"'{tmp_path}'", "is a directory", **{**quiet, "geoip_db": tmp_path})


def test_geoip_not_a_maxmind_file(build: Build, quiet: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "city.mmdb"
    path.write_text("GeoIP? no: just text\n" * 100)
    config_error(build, str(path), "not a valid MaxMind DB", **{**quiet, "geoip_db": path})


def test_geoip_empty_file(build: Build, quiet: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "empty.mmdb"
    path.write_bytes(b"")
    config_error(build, str(path), "MaxMind DB", **{**quiet, "geoip_db": path})


def test_geoip_truncated_file(
    build: Build, quiet: dict[str, Any], tmp_path: Path, city_db: Path
) -> None:
    path = tmp_path / "truncated.mmdb"
    path.write_bytes(city_db.read_bytes()[: city_db.stat().st_size // 2])
    config_error(build, str(path), "MaxMind DB", **{**quiet, "geoip_db": path})


def test_geoip_corrupt_data_section(
    build: Build, quiet: dict[str, Any], tmp_path: Path, city_db: Path
) -> None:
    path = corrupt_data_section(city_db, tmp_path / "corrupt.mmdb")
    config_error(build, str(path), "corrupt", **{**quiet, "geoip_db": path})


def test_geoip_wrong_schema(build: Build, quiet: dict[str, Any], tmp_path: Path) -> None:
    path = write_asn_db(tmp_path / "GeoLite2-ASN.mmdb")
    config_error(
        build, str(path), "'GeoLite2-ASN'", "City or Country", **{**quiet, "geoip_db": path}
    )


def test_geoip_unreadable_file(
    build: Build, quiet: dict[str, Any], tmp_path: Path, city_db: Path
) -> None:
    path = tmp_path / "secret.mmdb"
    path.write_bytes(city_db.read_bytes())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running with privileges that read any file (root)")
        config_error(build, str(path), "cannot be read", **{**quiet, "geoip_db": path})
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (True, "geoip_db=True is ambiguous"),
        (42, "geoip_db must be a file path, None or False, got 42"),
        (b"/tmp/city.mmdb", "geoip_db must be a file path"),
    ],
)
def test_geoip_value_of_the_wrong_type(
    build: Build, quiet: dict[str, Any], value: Any, fragment: str
) -> None:
    config_error(build, fragment, **{**quiet, "geoip_db": value})


def test_geoip_city_and_country_databases_are_accepted(
    build: Build, quiet: dict[str, Any], tmp_path: Path, city_db: Path
) -> None:
    city = build(**{**quiet, "geoip_db": city_db})
    assert city.geo.enabled
    assert city.geo.lookup(FRANKFURT.ip) == FRANKFURT.geo
    country = build(**{**quiet, "geoip_db": write_country_db(tmp_path / "country.mmdb")})
    assert country.geo.enabled
    assert country.geo.lookup(FRANKFURT.ip) == FRANKFURT.country_geo


# MaxMind's own broken and foreign-schema test files: optional, they live outside the repo.
@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("GeoIP2-City-Test-Broken-Double-Format.mmdb", "corrupt"),
        ("MaxMind-DB-test-broken-search-tree-24.mmdb", "'Test'"),
        ("GeoLite2-ASN-Test.mmdb", "City or Country"),
        ("GeoIP2-Anonymous-IP-Test.mmdb", "City or Country"),
    ],
)
def test_geoip_shared_bad_files(
    build: Build, quiet: dict[str, Any], name: str, fragment: str
) -> None:
    path = shared(name)
    config_error(build, str(path), fragment, **{**quiet, "geoip_db": path})


# ----------------------------------------------------------------------------- trusted proxies


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ("*", ("trusted_proxies entry '*' would trust every peer",)),
        (["*"], ("'*'", "would trust every peer")),
        (["10.0.0.1", "0.0.0.0/0"], ("'0.0.0.0/0'", "would trust every peer")),
        ("::/0", ("'::/0'", "would trust every peer")),
        ("10.0.0.1, garbage", ("trusted_proxies entry 'garbage'", "not an IP address or CIDR")),
        (["10.0.0.0/33"], ("'10.0.0.0/33'", "not an IP address or CIDR")),
        (["192.168.1.300"], ("'192.168.1.300'", "not an IP address or CIDR")),
        ([42], ("trusted_proxies", "42")),
        (42, ("trusted_proxies",)),
    ],
)
def test_bad_trusted_proxies(
    build: Build, quiet: dict[str, Any], value: Any, fragments: tuple[str, ...]
) -> None:
    config_error(build, *fragments, **{**quiet, "trusted_proxies": value})


def test_good_trusted_proxies(build: Build, quiet: dict[str, Any]) -> None:
    leza = build(**quiet, trusted_proxies=["10.0.0.0/8", " 192.168.1.7 ", "2001:db8::/32"])
    assert leza.proxies.networks == ("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32")
    assert leza.proxies.is_trusted("10.20.30.40")
    assert not leza.proxies.is_trusted("192.168.1.8")


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("name", ["batch_size", "queue_size"])
@pytest.mark.parametrize("value", [0, -1, "0", "-5"])
def test_non_positive_counts(build: Build, quiet: dict[str, Any], name: str, value: Any) -> None:
    config_error(build, name, "positive whole number", repr(value), **{**quiet, name: value})


@pytest.mark.parametrize("name", ["batch_size", "queue_size"])
@pytest.mark.parametrize("value", ["many", "", "1e3", [1]])
def test_counts_that_are_not_numbers(
    build: Build, quiet: dict[str, Any], name: str, value: Any
) -> None:
    config_error(build, name, "whole number", **{**quiet, name: value})


@pytest.mark.parametrize("name", ["batch_size", "queue_size"])
def test_boolean_count_is_refused(build: Build, quiet: dict[str, Any], name: str) -> None:
    config_error(build, name, "True", **{**quiet, name: True})


@pytest.mark.parametrize("name", ["flush_interval", "shutdown_timeout"])
@pytest.mark.parametrize("value", [0, -0.5, "0", "-1", float("nan"), float("inf"), "inf"])
def test_non_positive_seconds(build: Build, quiet: dict[str, Any], name: str, value: Any) -> None:
    config_error(build, name, "positive, finite number of seconds", **{**quiet, name: value})


@pytest.mark.parametrize("value", ["soon", "", [1.0]])
def test_seconds_that_are_not_numbers(build: Build, quiet: dict[str, Any], value: Any) -> None:
    config_error(
        build, "flush_interval must be a number of seconds", **{**quiet, "flush_interval": value}
    )


def test_good_numbers(build: Build, quiet: dict[str, Any]) -> None:
    leza = build(**quiet, batch_size=64, queue_size="500", flush_interval="0.25")
    assert (leza.settings.batch_size, leza.settings.queue_size) == (64, 500)
    assert leza.settings.flush_interval == 0.25
    assert leza.recorder.batch_size == 64
    assert leza.recorder.queue_size == 500


# ----------------------------------------------------------------------------- other settings


def test_unknown_keyword_setting(build: Build, quiet: dict[str, Any]) -> None:
    message = config_error(
        build,
        "unknown setting(s): batchsize, storag",
        **{**quiet, "storag": "memory://", "batchsize": 10},
    )
    assert "known:" in message
    assert "batch_size" in message  # the list of known names helps spot the typo


@pytest.mark.parametrize(
    ("hook", "type_name"), [("alice", "str"), (42, "int"), ({"id": "u-1"}, "dict")]
)
def test_performer_hook_must_be_callable(
    build: Build, quiet: dict[str, Any], hook: Any, type_name: str
) -> None:
    config_error(
        build, "performer must be a callable", f"got {type_name}", **{**quiet, "performer": hook}
    )


def test_performer_hook_accepted(build: Build, quiet: dict[str, Any]) -> None:
    def hook(request: Any) -> dict[str, str]:
        return {"id": "u-1"}

    assert build(**quiet, performer=hook).performer_hook is hook


@pytest.mark.parametrize("key", ["short", "", "x" * 15, 1234567890123456789])
def test_short_secret_key(build: Build, quiet: dict[str, Any], key: Any) -> None:
    message = config_error(
        build, "secret_key", "at least 16 characters", **{**quiet, "secret_key": key}
    )
    if isinstance(key, str) and key:
        assert key not in message  # a secret is never echoed


def test_secret_key_of_16_characters(build: Build, quiet: dict[str, Any]) -> None:
    assert build(**{**quiet, "secret_key": "k" * 16}).settings.secret_key == "k" * 16


@pytest.mark.parametrize("name", ["app_name", "request_id_header"])
def test_empty_names(build: Build, quiet: dict[str, Any], name: str) -> None:
    config_error(build, f"{name} must be a non-empty string", **{**quiet, name: "  "})


# ----------------------------------------------------------------------------- environment


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Set ``LEZA_<NAME>`` variables over quiet defaults (memory storage, geo off)."""
    base = {
        "STORAGE": "memory://",
        "GEOIP_DB": "off",
        "SPILL_DIR": str(tmp_path / "spill"),
        "SECRET_KEY": "test-secret-0123456789abcdef",
    }

    def setenv(**values: str) -> None:
        for name, value in {**base, **values}.items():
            monkeypatch.setenv(f"LEZA_{name.upper()}", value)

    return setenv


@pytest.mark.parametrize(
    ("name", "value", "fragments"),
    [
        ("storage", "redis://localhost:6379/0", ("unknown storage URL scheme 'redis'",)),
        ("storage", "leza.db", ("not a URL",)),
        ("trusted_proxies", "*", ("trusted_proxies entry '*' would trust every peer",)),
        ("trusted_proxies", " * ", ("would trust every peer",)),
        ("trusted_proxies", "10.0.0.1,0.0.0.0/0", ("'0.0.0.0/0'", "would trust every peer")),
        ("trusted_proxies", "10.0.0.1, garbage", ("'garbage'", "not an IP address")),
        ("batch_size", "0", ("batch_size", "positive whole number", "'0'")),
        ("batch_size", "lots", ("batch_size", "whole number", "'lots'")),
        ("queue_size", "-10", ("queue_size", "positive whole number", "'-10'")),
        ("flush_interval", "0", ("flush_interval", "positive, finite", "'0'")),
        ("flush_interval", "1s", ("flush_interval", "number of seconds", "'1s'")),
        ("shutdown_timeout", "-1", ("shutdown_timeout", "positive, finite")),
        ("secret_key", "too-short", ("secret_key", "at least 16 characters")),
        ("app_name", "   ", ("app_name (from $LEZA_APP_NAME) must be a non-empty string",)),
    ],
)
def test_bad_environment_values(
    build: Build, env: Callable[..., None], name: str, value: str, fragments: tuple[str, ...]
) -> None:
    env(**{name: value})
    message = config_error(build, *fragments)
    if name == "secret_key":
        assert value not in message


def test_environment_sqlite_in_a_missing_directory(
    build: Build, env: Callable[..., None], tmp_path: Path
) -> None:
    missing = tmp_path / "gone"
    env(storage=f"sqlite:///{missing / 'leza.db'}")
    config_error(build, str(missing), "does not exist")


def test_environment_geoip_errors(build: Build, env: Callable[..., None], tmp_path: Path) -> None:
    missing = tmp_path / "missing.mmdb"
    env(geoip_db=str(missing))
    config_error(build, str(missing), "file not found")
    text = tmp_path / "text.mmdb"
    text.write_text("not a database\n" * 50)
    env(geoip_db=str(text))
    config_error(build, str(text), "not a valid MaxMind DB")
    asn = write_asn_db(tmp_path / "asn.mmdb")
    env(geoip_db=str(asn))
    config_error(build, str(asn), "City or Country")


def test_environment_good_values(
    build: Build, env: Callable[..., None], city_db: Path, tmp_path: Path
) -> None:
    env(
        storage=f"sqlite:///{tmp_path / 'leza.db'}",
        geoip_db=str(city_db),
        trusted_proxies="10.0.0.0/8, 192.168.1.7",
        batch_size="64",
        queue_size="2000",
        flush_interval="0.5",
        secret_key="an-env-secret-key-of-some-length",
        app_name="billing",
    )
    leza = build()
    s = leza.settings
    assert s.storage == f"sqlite:///{tmp_path / 'leza.db'}"
    assert leza.geo.enabled
    assert leza.geo.path == str(city_db)
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.7")
    assert leza.proxies.networks == ("10.0.0.0/8", "192.168.1.7/32")
    assert (s.batch_size, s.queue_size, s.flush_interval) == (64, 2000, 0.5)
    assert s.secret_key == "an-env-secret-key-of-some-length"
    assert s.app_name == "billing"
    assert s.spill_dir == str(tmp_path / "spill")


def test_explicit_arguments_override_the_environment(
    build: Build, env: Callable[..., None], tmp_path: Path
) -> None:
    # Every variable is bad: the explicit arguments must win over each of them.
    env(
        storage="redis://localhost/0",
        geoip_db=str(tmp_path / "missing.mmdb"),
        trusted_proxies="*",
        batch_size="0",
        queue_size="-1",
        flush_interval="never",
        shutdown_timeout="0",
        secret_key="short",
        app_name="from-env",
    )
    leza = build(
        storage="memory://",
        geoip_db=False,
        trusted_proxies=["10.0.0.1"],
        batch_size=10,
        queue_size=100,
        flush_interval=0.2,
        shutdown_timeout=1,
        secret_key="an-explicit-secret-key",
        app_name="explicit",
    )
    s = leza.settings
    assert s.storage == "memory://"
    assert not leza.geo.enabled
    assert leza.proxies.networks == ("10.0.0.1/32",)
    assert (s.batch_size, s.queue_size, s.flush_interval, s.shutdown_timeout) == (10, 100, 0.2, 1)
    assert s.secret_key == "an-explicit-secret-key"
    assert s.app_name == "explicit"


def test_explicit_empty_proxy_list_overrides_the_environment(
    build: Build, env: Callable[..., None]
) -> None:
    env(trusted_proxies="*")
    config_error(build, "would trust every peer")  # the variable alone is refused ...
    leza = build(trusted_proxies=())  # ... an explicit "no proxies" wins over it
    assert leza.proxies.networks == ()


def test_unset_arguments_still_read_the_environment(build: Build, env: Callable[..., None]) -> None:
    env(app_name="from-env", batch_size="32")
    leza = build(storage="memory://", queue_size=50)
    assert (leza.settings.app_name, leza.settings.batch_size) == ("from-env", 32)
    assert leza.settings.queue_size == 50


# ----------------------------------------------------------------------------- geo on / off


def test_geoip_false_disables_geo_silently(
    build: Build, quiet: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        leza = build(**quiet)
        assert leza.settings.geoip_db is False
        assert not leza.geo.enabled
        assert leza.geo.lookup(FRANKFURT.ip) is None
    assert leza_warnings(caplog) == []


@pytest.mark.parametrize("value", ["off", "OFF", "false", "none", "0", ""])
def test_env_geoip_off_disables_geo_silently(
    build: Build, env: Callable[..., None], caplog: pytest.LogCaptureFixture, value: str
) -> None:
    env(geoip_db=value)
    with caplog.at_level(logging.DEBUG):
        leza = build()
        assert not leza.geo.enabled
    assert leza_warnings(caplog) == []


def test_explicit_false_overrides_a_bad_env_geoip_db(
    build: Build, env: Callable[..., None], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env(geoip_db=str(tmp_path / "missing.mmdb"))
    with caplog.at_level(logging.DEBUG):
        leza = build(geoip_db=False)
    assert not leza.geo.enabled
    assert leza_warnings(caplog) == []


def test_default_geoip_without_the_geolite2_package_warns_once(
    build: Build,
    quiet: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As if maxminddb-geolite2 were not installed: the finder's module is not importable.
    monkeypatch.setitem(sys.modules, "_maxminddb_geolite2", None)
    with caplog.at_level(logging.DEBUG):
        leza = build(**{**quiet, "geoip_db": None})
        for _ in range(3):  # lookups do not repeat it
            assert leza.geo.lookup(FRANKFURT.ip) is None
    assert not leza.geo.enabled
    records = leza_warnings(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert records[0].levelno == logging.WARNING
    assert "GeoIP lookups are disabled" in message
    assert "geoip_db=" in message
    assert "leza-middleware[geolite2]" in message


def test_default_geoip_uses_the_geolite2_package_when_installed(
    build: Build, quiet: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("_maxminddb_geolite2", reason="maxminddb-geolite2 is not installed")
    with caplog.at_level(logging.DEBUG):
        leza = build(**{**quiet, "geoip_db": None})
    assert leza.geo.enabled
    assert "City" in leza.geo.database_type
    assert leza_warnings(caplog) == []


def test_errors_from_environment_name_the_variable(build: Build, env: Callable[..., None]) -> None:
    env(batch_size="0")
    config_error(build, "$LEZA_BATCH_SIZE")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"batch_size": 1.5}, "batch_size must be a whole number, got 1.5"),
        ({"queue_size": 2.9}, "queue_size must be a whole number, got 2.9"),
        ({"batch_size": True}, "batch_size must be a whole number, got True"),
        ({"flush_interval": True}, "flush_interval must be a number of seconds, got True"),
        ({"max_retries": -1}, "max_retries must be a whole number >= 0, got -1"),
    ],
)
def test_numbers_are_not_silently_coerced(
    build: Build, quiet: dict[str, Any], kwargs: dict[str, Any], fragment: str
) -> None:
    config_error(build, fragment, **{**quiet, **kwargs})


def test_max_retries_zero_is_allowed(build: Build, quiet: dict[str, Any]) -> None:
    assert build(**{**quiet, "max_retries": 0}).settings.max_retries == 0


def test_spill_dir_under_a_file_is_refused_at_configuration(
    build: Build, quiet: dict[str, Any], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config_error(
        build,
        "spill_dir",
        "is a file, not a directory",
        **{**quiet, "spill_dir": str(blocker / "spill")},
    )


@pytest.mark.parametrize("word", ["true", "on", "1", "yes"])
def test_geoip_switch_words_are_not_paths(
    build: Build, env: Callable[..., None], word: str
) -> None:
    env(geoip_db=word)
    config_error(build, "$LEZA_GEOIP_DB", "give the path of a .mmdb file")


# ----------------------------------------------------------------------------- revocation


@pytest.mark.parametrize("value", ["deny", "", "open", 0, True, ["refuse"]])
def test_revocation_unknown_takes_refuse_or_allow(
    build: Build, quiet: dict[str, Any], value: Any
) -> None:
    config_error(
        build, "revocation_unknown must be one of 'refuse', 'allow'", repr(value),
        **{**quiet, "revocation_unknown": value},
    )  # fmt: skip


@pytest.mark.parametrize("name", ["revocation_load_timeout", "revocation_max_staleness"])
@pytest.mark.parametrize("value", [0, -1, "0", float("nan"), "inf", "soon"])
def test_revocation_bounds_are_positive_seconds(
    build: Build, quiet: dict[str, Any], name: str, value: Any
) -> None:
    config_error(build, name, "number of seconds", **{**quiet, name: value})


def test_revocation_staleness_must_exceed_the_poll_interval(
    build: Build, quiet: dict[str, Any]
) -> None:
    config_error(
        build,
        "revocation_max_staleness (5 s) must be longer than session_poll_interval (5 s)",
        **quiet,
        revocation_max_staleness=5,
        session_poll_interval=5,
    )


def test_revocation_defaults_and_good_values(build: Build, quiet: dict[str, Any]) -> None:
    s = build(**quiet).settings
    assert (s.revocation_unknown, s.revocation_load_timeout) == ("refuse", 5.0)
    assert s.max_staleness() == 60.0
    # Unset, the staleness bound follows a long poll interval (two polls).
    assert build(**quiet, session_poll_interval=600).settings.max_staleness() == 1200.0
    leza = build(
        **quiet, revocation_unknown=" Allow ", revocation_load_timeout="0.5",
        revocation_max_staleness="30",
    )  # fmt: skip
    s = leza.settings
    assert (s.revocation_unknown, s.revocation_load_timeout, s.max_staleness()) == (
        "allow", 0.5, 30.0,
    )  # fmt: skip
    assert leza.sessions.blocklist.refuse_unknown is False
    assert leza.stats()["revocations"]["unknown"] == "allow"


def test_revocation_settings_from_the_environment(build: Build, env: Callable[..., None]) -> None:
    env(revocation_unknown="allow", revocation_load_timeout="2.5", revocation_max_staleness="90")
    s = build().settings
    assert (s.revocation_unknown, s.revocation_load_timeout, s.max_staleness()) == (
        "allow", 2.5, 90.0,
    )  # fmt: skip
    env(revocation_unknown="maybe")
    config_error(build, "revocation_unknown (from $LEZA_REVOCATION_UNKNOWN) must be one of")
    env(revocation_unknown="refuse", revocation_max_staleness="1")
    config_error(
        build,
        "revocation_max_staleness (from $LEZA_REVOCATION_MAX_STALENESS) (1 s) must be longer",
    )


def test_revocation_settings_from_flask_config(build: Build, quiet: dict[str, Any]) -> None:
    from flask import Flask

    app = Flask("revocation_config")
    app.config.update(LEZA_REVOCATION_UNKNOWN="allow", LEZA_REVOCATION_LOAD_TIMEOUT=1.5)
    leza = build(**quiet)
    leza.init_app(app)
    assert (leza.settings.revocation_unknown, leza.settings.revocation_load_timeout) == (
        "allow", 1.5,
    )  # fmt: skip
    assert leza.sessions.blocklist.load_timeout == 1.5
    bad = Flask("revocation_config_bad")
    bad.config.update(LEZA_REVOCATION_UNKNOWN="never")
    with pytest.raises(LezaConfigError, match="revocation_unknown must be one of"):
        build(**quiet).init_app(bad)
