"""User-Agent enricher: fields, user_agents-equivalent flags, cache, hostile input."""

from __future__ import annotations

import importlib.resources
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import user_agents
from hypothesis import given, settings
from hypothesis import strategies as st
from ua_parser import Domain
from user_agents.parsers import UserAgent

from leza_middleware.enrich.useragent import MAX_UA_LENGTH, UserAgentParser, _get_backend
from leza_middleware.events import Device, ua_key

UAS_1000 = Path(__file__).resolve().parents[2] / "shared/testdata/ua/uas_1000.json"
FLAGS = ("is_mobile", "is_tablet", "is_pc", "is_touch_capable", "is_bot")

CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

# (id, user agent, expected Device fields). Fields not listed are not checked.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "chrome-windows-x64",
        CHROME_WIN,
        {
            "browser_type": "browser",
            "browser_name": "Chrome",
            "browser_version": "126.0",
            "engine": "Blink",
            "engine_version": "",
            "os_name": "Windows",
            "os_version": "10",
            "os_platform": "x64",
            "device_type": "desktop",
            "device_brand": "",
            "device_model": "",
            "is_pc": True,
            "is_mobile": False,
            "is_tablet": False,
            "is_touch_capable": False,
            "bot_name": None,
        },
    ),
    (
        "chrome-linux-seed",  # the session record in DESIGN.md
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/91.0.4472.114 Safari/537.36",
        {
            "browser_type": "browser",
            "browser_name": "Chrome",
            "browser_version": "91.0",
            "engine": "Blink",
            "engine_version": "",
            "os_name": "GNU/Linux",
            "os_version": "",
            "os_platform": "x64",
            "device_type": "desktop",
            "device_brand": "",
            "device_model": "",
            "bot_name": None,
        },
    ),
    (
        "firefox-linux",
        "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
        {
            "browser_name": "Firefox",
            "browser_version": "127.0",
            "engine": "Gecko",
            "engine_version": "127.0",
            "os_name": "GNU/Linux",
            "os_platform": "x64",
            "device_type": "desktop",
        },
    ),
    (
        "safari-macos",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.5 Safari/605.1.15",
        {
            "browser_name": "Safari",
            "browser_version": "17.5",
            "engine": "WebKit",
            "engine_version": "605.1.15",
            "os_name": "Mac OS X",
            "os_version": "10.15.7",
            "os_platform": "",
            "device_type": "desktop",
            "is_pc": True,
        },
    ),
    (
        "safari-iphone",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        {
            "browser_name": "Mobile Safari",
            "browser_version": "17.5",
            "engine": "WebKit",
            "engine_version": "605.1.15",
            "os_name": "iOS",
            "os_version": "17.5",
            "device_type": "smartphone",
            "device_brand": "Apple",
            "device_model": "iPhone",
            "is_mobile": True,
            "is_tablet": False,
            "is_pc": False,
            "is_touch_capable": True,
        },
    ),
    (
        "chrome-iphone-is-webkit",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) CriOS/126.0.6478.153 Mobile/15E148 Safari/604.1",
        {
            "browser_name": "Chrome Mobile iOS",
            "engine": "WebKit",
            "engine_version": "605.1.15",
            "device_type": "smartphone",
        },
    ),
    (
        "ipad",
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        {
            "os_name": "iOS",
            "device_type": "tablet",
            "device_brand": "Apple",
            "device_model": "iPad",
            "engine": "WebKit",
            "is_tablet": True,
            "is_mobile": False,
            "is_touch_capable": True,
        },
    ),
    (
        "android-phone-chrome",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/126.0.6478.122 Mobile Safari/537.36",
        {
            "browser_name": "Chrome Mobile",
            "browser_version": "126.0",
            "engine": "Blink",
            "os_name": "Android",
            "os_version": "14",
            "device_type": "smartphone",
            "device_brand": "Google",
            "device_model": "Pixel 8",
            "is_mobile": True,
            "is_touch_capable": True,
        },
    ),
    (
        "android-tablet-no-mobile",
        "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
        {
            "browser_name": "Chrome",
            "engine": "Blink",
            "os_name": "Android",
            "device_type": "tablet",
            # ua-parser's brand is the placeholder "Generic_Android_Tablet": not a brand.
            "device_brand": "",
            "device_model": "SM-X200",
            "is_tablet": True,
            "is_mobile": False,
        },
    ),
    (
        "samsung-internet",
        "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S901B) AppleWebKit/537.36 "
        "(KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
        {
            "browser_name": "Samsung Internet",
            "browser_version": "25.0",
            "engine": "Blink",
            "device_type": "smartphone",
            "device_brand": "Samsung",
            "device_model": "SM-S901B",
        },
    ),
    (
        "edge-chromium",
        CHROME_WIN + " Edg/126.0.2592.87",
        {
            "browser_name": "Edge",
            "browser_version": "126.0",
            "engine": "Blink",
            "engine_version": "",
            "os_platform": "x64",
            "device_type": "desktop",
        },
    ),
    (
        "edge-legacy",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/70.0.3538.102 Safari/537.36 Edge/18.19582",
        {
            "browser_name": "Edge",
            "engine": "EdgeHTML",
            "engine_version": "18.19582",
            "device_type": "desktop",
        },
    ),
    (
        "ie11",
        "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
        {
            "browser_name": "IE",
            "browser_version": "11.0",
            "engine": "Trident",
            "engine_version": "7.0",
            "os_name": "Windows",
            "os_platform": "x64",
            "device_type": "desktop",
        },
    ),
    (
        "opera-presto",
        "Opera/9.80 (Windows NT 6.1; U; en) Presto/2.10.289 Version/12.02",
        {
            "browser_name": "Opera",
            "browser_version": "12.02",
            "engine": "Presto",
            "engine_version": "2.10.289",
            "os_name": "Windows",
            "os_version": "7",
            "os_platform": "",
        },
    ),
    (
        "googlebot-desktop",
        GOOGLEBOT,
        {
            "browser_type": "bot",
            "browser_name": "Googlebot",
            "device_type": "bot",
            "device_brand": "",
            "device_model": "",
            "os_name": "",
            "bot_name": "Googlebot",
            "bot_category": "Search bot",
            "bot_url": "http://www.google.com/bot.html",
            "is_pc": False,
            "is_mobile": False,
        },
    ),
    (
        "googlebot-smartphone",
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/126.0.6478.126 Mobile Safari/537.36 "
        "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        {
            "browser_type": "bot",
            "bot_name": "Googlebot",
            "bot_category": "Search bot",
            "bot_url": "http://www.google.com/bot.html",
            # user_agents: an Android spider is mobile.
            "device_type": "smartphone",
            "is_mobile": True,
            "engine": "Blink",
        },
    ),
    (
        "bingbot",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        {
            "browser_type": "bot",
            "bot_name": "bingbot",
            "bot_category": "Search bot",
            "bot_url": "http://www.bing.com/bingbot.htm",
            "device_type": "bot",
        },
    ),
    (
        "yahoo-slurp-url-without-plus",
        "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
        {
            "bot_name": "Yahoo! Slurp",
            "bot_category": "Search bot",
            "bot_url": "http://help.yahoo.com/help/us/ysearch/slurp",
        },
    ),
    (
        "other-crawler",
        "Mozilla/5.0 (compatible; DotBot/1.2; +https://opensiteexplorer.org/dotbot)",
        {
            "browser_type": "bot",
            "bot_name": "DotBot",
            "bot_category": "Crawler",
            "bot_url": "https://opensiteexplorer.org/dotbot",
        },
    ),
    (
        # user_agents does not call curl a bot (its device family is not "Spider").
        "curl",
        "curl/7.68.0",
        {
            "browser_type": "browser",
            "browser_name": "curl",
            "browser_version": "7.68",
            "engine": "",
            "os_name": "",
            "device_type": "",
            "bot_name": None,
            "is_pc": False,
            "is_mobile": False,
        },
    ),
    (
        "outlook-email-client",
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.12026; Pro)",
        {"browser_type": "email client", "browser_name": "Outlook", "device_type": "desktop"},
    ),
    (
        "linux-arm64",
        "Mozilla/5.0 (X11; Linux aarch64; rv:109.0) Gecko/20100101 Firefox/115.0",
        {"os_platform": "arm64", "engine": "Gecko", "engine_version": "109.0"},
    ),
    (
        "linux-armv7",
        "Mozilla/5.0 (X11; Linux armv7l) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/92.0.4515.98 Safari/537.36",
        {"os_platform": "arm", "engine": "Blink"},
    ),
    (
        "linux-i686",
        "Mozilla/5.0 (X11; Linux i686; rv:102.0) Gecko/20100101 Firefox/102.0",
        {"os_platform": "x86"},
    ),
    (
        "old-chrome-is-webkit",
        "Mozilla/5.0 (Windows NT 6.1) AppleWebKit/535.19 (KHTML, like Gecko) "
        "Chrome/18.0.1025.168 Safari/535.19",
        {"engine": "WebKit", "engine_version": "535.19", "browser_version": "18.0"},
    ),
]


@pytest.fixture(scope="module")
def parser() -> UserAgentParser:
    return UserAgentParser()


def _legacy_flags(ua: str) -> dict[str, bool]:
    legacy = user_agents.parse(ua)
    return {f: getattr(legacy, f) for f in FLAGS}


def _flags(device: Device) -> dict[str, bool]:
    return {f: getattr(device, f) for f in FLAGS}


@pytest.mark.parametrize(("ua", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_real_user_agents(parser: UserAgentParser, ua: str, expected: dict[str, Any]) -> None:
    device = parser.parse(ua)
    assert device.key == ua_key(ua)
    assert device.user_agent == ua
    assert {k: getattr(device, k) for k in expected} == expected
    # Every case also agrees with user_agents itself.
    assert _flags(device) == _legacy_flags(ua)
    assert device.is_bot == (device.bot_name is not None)
    # The stored JSON form round-trips.
    assert Device.from_dict(device.user_agent, device.to_dict()) == device


@pytest.mark.parametrize("ua", ["", None])
def test_empty_user_agent(parser: UserAgentParser, ua: str | None) -> None:
    device = parser.parse(ua)
    assert device == Device(key=ua_key(""), user_agent="")
    assert not any(_flags(device).values())
    assert device.to_dict()["bot"] is None


def test_control_characters_are_removed_before_parsing(parser: UserAgentParser) -> None:
    dirty = "Mozilla/5.0 (compatible; Googlebot/2.1;\r\n +http://www.google.com/bot.html)\x00\t"
    device = parser.parse(dirty)
    clean = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    assert device.user_agent == clean
    assert device.key == ua_key(clean)
    assert device.bot_name == "Googlebot"
    only_controls = parser.parse("\r\n\x00\x1b")
    assert only_controls.user_agent == ""
    assert only_controls.key == ua_key("")


def test_huge_user_agent_is_capped_and_fast() -> None:
    parser = UserAgentParser()
    parser.parse(CHROME_WIN)  # build the resolver outside the timing
    huge = CHROME_WIN + " " + "x" * 100_000
    started = time.perf_counter()
    device = parser.parse(huge)
    elapsed = time.perf_counter() - started
    assert len(device.user_agent) == MAX_UA_LENGTH
    assert device.user_agent == huge[:MAX_UA_LENGTH]
    assert device.key == ua_key(huge[:MAX_UA_LENGTH])
    assert device.browser_name == "Chrome"
    # Not a benchmark (see bench/): only "not proportional to 100 KB of regex work".
    assert elapsed < 0.05
    # The cache key is bounded too: a second 100 KB string hits the same entry.
    assert parser.parse(CHROME_WIN + " " + "x" * 100_001) is device


# ---- equivalence with user_agents ------------------------------------------------


def _shipped_devices() -> dict[str, dict[str, Any]]:
    text = importlib.resources.files("user_agents").joinpath("devices.json").read_text("utf-8")
    data: dict[str, dict[str, Any]] = json.loads(text)
    return data


def test_user_agents_layout_is_what_we_fill() -> None:
    """We build user_agents' UserAgent without its __init__: guard the attributes it sets."""
    legacy = user_agents.parse(CHROME_WIN)
    assert type(legacy) is UserAgent
    assert set(vars(legacy)) == {"ua_string", "os", "browser", "device"}
    ours = _get_backend().classify(CHROME_WIN)[0]
    assert type(ours) is UserAgent
    assert vars(ours) == vars(legacy)


def _all_test_uas() -> list[str]:
    uas = [c[1] for c in CASES] + [c["ua_string"] for c in _shipped_devices().values()]
    if UAS_1000.exists():
        uas += json.loads(UAS_1000.read_text("utf-8"))
    return uas


def test_direct_extractors_equal_the_resolver() -> None:
    """The fast path (ua_parser_rs extractors) gives what ``resolver(ua, Domain.ALL)`` does."""
    backend = _get_backend()
    assert backend.rust is not None, "ua-parser-rs should be installed"
    fast = [backend.parts(ua) for ua in _all_test_uas()]
    rust, backend.rust = backend.rust, None  # force the generic resolver path
    try:
        slow = [backend.parts(ua) for ua in _all_test_uas()]
    finally:
        backend.rust = rust
    assert fast == slow
    result = backend.resolver(CHROME_WIN, Domain.ALL).complete().with_defaults()
    assert backend.parts(CHROME_WIN) == (
        ("Chrome", "126", "0", "0"),
        (result.os.family, result.os.major, result.os.minor, result.os.patch, None),
        ("Other", None, None),
    )


def test_shipped_devices_json_matches_user_agents(parser: UserAgentParser) -> None:
    devices = _shipped_devices()
    assert len(devices) > 30
    backend = _get_backend()
    for name, case in devices.items():
        ua = case["ua_string"]
        # The whole parse (families, versions, brand, model), not only the flags.
        assert vars(backend.classify(ua)[0]) == vars(user_agents.parse(ua)), name
        device = parser.parse(ua)
        assert _flags(device) == _legacy_flags(ua), name
        assert _flags(device) == {f: case[f] for f in FLAGS}, name


def test_shared_corpus_matches_user_agents() -> None:
    if not UAS_1000.exists():
        pytest.skip(f"{UAS_1000} not present")
    uas: list[str] = json.loads(UAS_1000.read_text("utf-8"))
    assert len(uas) == 1000
    parser = UserAgentParser(cache_size=2000)
    # Measured: the Rust and legacy regex engines agree on all 1000, so no
    # allowance for differences is needed.
    mismatches = [ua for ua in uas if _flags(parser.parse(ua)) != _legacy_flags(ua)]
    assert mismatches == []
    assert parser.cache_info()["errors"] == 0


# ---- cache -----------------------------------------------------------------------


def test_cache_returns_same_object_and_counts() -> None:
    parser = UserAgentParser(cache_size=8)
    first = parser.parse(CHROME_WIN)
    assert parser.parse(CHROME_WIN) is first
    assert parser.parse(CHROME_WIN) is first
    info = parser.cache_info()
    assert info == {"hits": 2, "misses": 1, "errors": 0, "size": 1, "maxsize": 8}


def test_cache_is_bounded_and_evicts_oldest_first() -> None:
    parser = UserAgentParser(cache_size=3)
    uas = [f"{CHROME_WIN} build/{i}" for i in range(5)]
    devices = [parser.parse(ua) for ua in uas]
    assert parser.cache_info()["size"] == 3
    # The last three are still cached; the first two were evicted and parse anew.
    for ua, device in zip(uas[2:], devices[2:], strict=True):
        assert parser.parse(ua) is device
    again = parser.parse(uas[0])
    assert again is not devices[0]
    assert again == devices[0]
    info = parser.cache_info()
    assert info["size"] == 3
    assert info["hits"] == 3
    assert info["misses"] == 6


def test_clear_empties_the_cache() -> None:
    parser = UserAgentParser(cache_size=4)
    parser.parse(CHROME_WIN)
    parser.clear()
    assert parser.cache_info()["size"] == 0


def test_concurrent_use_stays_bounded() -> None:
    parser = UserAgentParser(cache_size=16)
    uas = [f"{CHROME_WIN} build/{i}" for i in range(64)]
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                for ua in uas:
                    assert parser.parse(ua).browser_name == "Chrome"
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert parser.cache_info()["size"] <= 16
    assert parser.cache_info()["errors"] == 0


# ---- hostile input ---------------------------------------------------------------


class _WeirdStr(str):
    def __str__(self) -> str:
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "value",
    [b"Mozilla/5.0", 42, 3.5, object(), ["Mozilla"], {"ua": 1}],
    ids=["bytes", "int", "float", "object", "list", "dict"],
)
def test_non_string_input_never_raises(value: Any) -> None:
    parser = UserAgentParser()
    device = parser.parse(value)
    assert device == Device(key=ua_key(""), user_agent="")
    assert parser.cache_info()["errors"] == 1


def test_str_subclass_is_parsed_as_its_value() -> None:
    parser = UserAgentParser()
    device = parser.parse(_WeirdStr(GOOGLEBOT))
    assert device.bot_name == "Googlebot"
    assert type(device.user_agent) is str
    assert parser.cache_info()["errors"] == 0


def test_lone_surrogates_do_not_break_parsing(parser: UserAgentParser) -> None:
    device = parser.parse("Mozilla/5.0 \ud800 (compatible; Googlebot/2.1)")
    assert device.bot_name == "Googlebot"
    device.user_agent.encode("utf-8")  # storable


@settings(max_examples=300, database=None, deadline=None)
@given(st.text(max_size=700))
def test_arbitrary_text_never_raises(text: str) -> None:
    parser = UserAgentParser(cache_size=64)
    device = parser.parse(text)
    assert isinstance(device, Device)
    assert len(device.user_agent) <= MAX_UA_LENGTH
    assert device.key == ua_key(device.user_agent)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in device.user_agent)
    device.user_agent.encode("utf-8")
    assert parser.cache_info()["errors"] == 0


_UA_PIECES = st.sampled_from([c[1] for c in CASES]) | st.text(alphabet="();/. MozilaWindowsNT0-9")


@settings(max_examples=200, database=None, deadline=None)
@given(st.lists(_UA_PIECES, min_size=1, max_size=3))
def test_spliced_user_agents_never_raise_and_match_user_agents(parts: list[str]) -> None:
    ua = " ".join(parts)[:MAX_UA_LENGTH]
    device = UserAgentParser(cache_size=4).parse(ua)
    if _flags(device) != _legacy_flags(device.user_agent):
        # The one known cause: uap-rust treats uap-core's ".{0,100}"-style bounds
        # (N >= 100) as unbounded, the legacy parser honours them; see
        # test_known_difference_long_user_agent_bot_token.
        assert len(device.user_agent) > 100


def test_known_difference_long_user_agent_bot_token(parser: UserAgentParser) -> None:
    """A bot token past character 100 is a bot for us, not for user_agents.

    uap-core's spider catch-all is ``^.{0,100}(bot|...)``; ua-parser-rs relaxes
    bounded repetitions of 100+ to unbounded (they only guard backtracking
    engines), the legacy pure-Python parser does not. uap-core issue #590
    reports the legacy behaviour as missing real bots.
    """
    ua = CHROME_WIN + " Edg/120.0.2210.133 VirusTotalBot"
    assert "Bot" not in ua[:100]
    device = parser.parse(ua)
    assert device.is_bot
    assert device.device_type == "desktop"
    assert not user_agents.parse(ua).is_bot
    # Short enough that the bound does not bite: both agree.
    short = "Mozilla/5.0 (compatible; VirusTotalBot/1.0)"
    assert parser.parse(short).is_bot
    assert user_agents.parse(short).is_bot
