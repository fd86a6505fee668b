"""User-Agent → :class:`~leza_middleware.events.Device`, on the recorder thread.

Parsing uses ua-parser 1.x with its Rust resolver (``ua-parser-rs``, ~30 µs a
cold parse instead of ~450 µs for the legacy pure-Python parser that
``user_agents.parse`` runs). The device classification (``is_mobile``,
``is_tablet``, ``is_pc``, ``is_touch_capable``, ``is_bot``) is ``user_agents``'
own: we fill a ``user_agents.parsers.UserAgent`` from the fast result, without
running its ``__init__``, and read its properties. Both parsers use the same
uap-core regexes, so the flags are the ones users of ``user_agents`` know: they
agree on every UA of user_agents' devices.json and of the shared 1000-UA corpus.

One known difference: ua-parser-rs treats uap-core's anti-backtracking bounds
``.{0,N}`` with N >= 100 as unbounded, the legacy parser honours them. So in a
long UA a token past that bound still counts, e.g. "...Safari/537.36
VirusTotalBot" is a bot here and not for ``user_agents`` (uap-core issue #590
calls the legacy behaviour a miss).

Results are cached per distinct UA string in a bounded dict (oldest inserted
evicted first). ``parse`` never raises.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from typing import TYPE_CHECKING

from ua_parser import Domain

from ..events import Device, ua_key
from .cache import bounded_put
from .text import clean

if TYPE_CHECKING:
    from ua_parser import Resolver
    from ua_parser_rs import DeviceExtractor, OSExtractor, UserAgentExtractor
    from user_agents.parsers import UserAgent

__all__ = ["MAX_UA_LENGTH", "UserAgentParser"]

#: Stored and parsed User-Agents are cut to this many characters (DESIGN.md).
MAX_UA_LENGTH = 512
# Raw characters looked at (and the longest cache key): a 100 KB header is cut
# before anything scans it, leaving room for control characters that cleaning
# removes.
RAW_LIMIT = 4 * MAX_UA_LENGTH

# Only consulted when "arm" occurs at all: "ARM;", "armv7l", "armhf", not "Charm".
_ARM_RE = re.compile(r"\barm(?:v\d+\w*|hf|el)?\b", re.IGNORECASE)
_WEBKIT_RE = re.compile(r"AppleWebKit/(\d[\w.]*)")
_GECKO_RV_RE = re.compile(r"\brv:(\d[\w.]*)")
_TRIDENT_RE = re.compile(r"Trident/(\d[\w.]*)")
_PRESTO_RE = re.compile(r"Presto/(\d[\w.]*)")
_EDGE_LEGACY_RE = re.compile(r"\bEdge/(\d[\w.]*)")
# Also matches "HeadlessChrome/", which is Blink as well.
_CHROME_RE = re.compile(r"Chrome/(\d+)")
# Prefer the "+http://..." URL bots put in their UA; else any URL.
_BOT_URL_RE = re.compile(r"\+(https?://[^\s;)(]+)|(https?://[^\s;)(]+)")
_SEARCH_BOT_RE = re.compile(
    r"google|bingbot|bingpreview|msnbot|yandex|baidu|duckduck|applebot|slurp|sogou"
    r"|seznam|yeti|naver|exabot|qwant|petalbot",
    re.IGNORECASE,
)

# What ua-parser reports, as plain tuples (a part that matched nothing is
# "Other", like ``Result.with_defaults()`` and the legacy parser).
_Browser = tuple[str, str | None, str | None, str | None]  # family, major, minor, patch
_Os = tuple[str, str | None, str | None, str | None, str | None]  # ..., patch_minor
_Hardware = tuple[str, str | None, str | None]  # family, brand, model
_NO_BROWSER: _Browser = ("Other", None, None, None)
_NO_OS: _Os = ("Other", None, None, None, None)
_NO_HARDWARE: _Hardware = ("Other", None, None)


def _empty(user_agent: str) -> Device:
    return Device(key=ua_key(user_agent), user_agent=user_agent)


_EMPTY = _empty("")


class _Backend:
    """The resolver plus the pieces of ``user_agents`` we reuse; built once, lazily.

    Building costs ~0.3 s (compiling the uap-core regexes for the resolver, and
    importing ``user_agents``, whose legacy parser compiles them again), so it
    happens on the first parse (on the recorder thread), not at import.
    """

    def __init__(self) -> None:
        from ua_parser import load_builtins
        from user_agents import parsers

        self.resolver: Resolver
        self.rust: tuple[UserAgentExtractor, OSExtractor, DeviceExtractor] | None = None
        try:
            from ua_parser.regex import Resolver as RustResolver  # needs ua-parser-rs
        except ImportError:  # pragma: no cover - ua-parser-rs is a dependency
            from ua_parser import BestAvailableResolver

            self.resolver = BestAvailableResolver(load_builtins())
        else:
            rust = RustResolver(load_builtins())
            self.resolver = rust
            # That resolver is a thin wrapper over three ua_parser_rs extractors.
            # Calling them directly skips five dataclasses and three enum.Flag
            # tests per parse: ~4.5 µs, ~15 % of a cold parse. Same results
            # (tests compare both ways on every test UA).
            with contextlib.suppress(AttributeError):
                self.rust = (rust.ua, rust.os, rust.de)
        self.ua_class: type[UserAgent] = parsers.UserAgent
        # Pure functions returning immutable tuples, called with few distinct
        # arguments (Chrome 126.0.0, Windows 10, ...): memoised, they cost ~0.2 µs
        # instead of ~1.8 µs each.
        self.parse_browser = functools.lru_cache(maxsize=1024)(parsers.parse_browser)
        self.parse_os = functools.lru_cache(maxsize=1024)(parsers.parse_operating_system)
        self.parse_device = functools.lru_cache(maxsize=1024)(parsers.parse_device)
        self.email_families = frozenset(parsers.EMAIL_PROGRAM_FAMILIES)

    def parts(self, ua: str) -> tuple[_Browser, _Os, _Hardware]:
        """ua-parser's browser, OS and device for ``ua``, "Other" when unmatched.

        Browser versions map "" to None as the legacy parser does (its OS and
        device parts are passed through unchanged, as here).
        """
        if self.rust is not None:
            ua_x, os_x, de_x = self.rust
            b, o, d = ua_x.extract(ua), os_x.extract(ua), de_x.extract(ua)
            return (
                (b.family, b.major or None, b.minor or None, b.patch or None) if b else _NO_BROWSER,
                (o.family, o.major, o.minor, o.patch, o.patch_minor) if o else _NO_OS,
                (d.family, d.brand, d.model) if d else _NO_HARDWARE,
            )
        r = self.resolver(ua, Domain.ALL)
        b2, o2, d2 = r.user_agent, r.os, r.device
        return (
            (b2.family, b2.major or None, b2.minor or None, b2.patch or None)
            if b2
            else _NO_BROWSER,
            (o2.family, o2.major, o2.minor, o2.patch, o2.patch_minor) if o2 else _NO_OS,
            (d2.family, d2.brand, d2.model) if d2 else _NO_HARDWARE,
        )

    def classify(self, ua: str) -> tuple[UserAgent, _Browser, _Os, _Hardware]:
        """Parse ``ua`` and wrap it as a ``user_agents`` ``UserAgent``."""
        browser, os, hardware = self.parts(ua)
        # What UserAgent.__init__ does, fed from the fast parser instead of the
        # legacy one. Its properties then classify exactly as user_agents does.
        legacy = object.__new__(self.ua_class)
        legacy.ua_string = ua
        legacy.os = self.parse_os(*os)
        legacy.browser = self.parse_browser(*browser)
        legacy.device = self.parse_device(*hardware)
        return legacy, browser, os, hardware

    def device(self, ua: str) -> Device:
        legacy, browser, os, hardware = self.classify(ua)
        family, major, minor, _ = browser
        os_family, os_major, os_minor, os_patch, _ = os
        is_tablet = legacy.is_tablet
        is_mobile = legacy.is_mobile
        is_pc = legacy.is_pc
        is_bot = legacy.is_bot

        name = "" if family == "Other" else family
        if is_bot:
            browser_type = "bot"
        elif family in self.email_families:
            browser_type = "email client"
        else:
            browser_type = "browser" if name else ""

        if is_tablet:
            device_type = "tablet"
        elif is_mobile:
            device_type = "smartphone"
        elif is_pc:
            device_type = "desktop"
        else:
            device_type = "bot" if is_bot else ""

        # "Spider" / "Generic_Android" are ua-parser categories, not brands.
        brand = hardware[1] or ""
        model = hardware[2] or ""
        if is_pc or brand == "Spider":
            brand = model = ""
        elif brand.startswith("Generic"):
            brand = ""

        bot_name: str | None = None
        bot_category = bot_url = ""
        if is_bot:
            bot_name = name or hardware[0]
            bot_category = "Search bot" if _SEARCH_BOT_RE.search(bot_name) else "Crawler"
            m = _BOT_URL_RE.search(ua)
            if m:
                bot_url = m[1] or m[2]

        engine, engine_version = _engine(ua, family, major, os_family)
        return Device(
            key=ua_key(ua),
            user_agent=ua,
            browser_type=browser_type,
            browser_name=name,
            browser_version=_version(major, minor) if name else "",
            engine=engine,
            engine_version=engine_version,
            os_name=_OS_NAMES.get(os_family, os_family),
            os_version=_version(os_major, os_minor, os_patch),
            os_platform=_platform(ua),
            device_type=device_type,
            device_brand=brand,
            device_model=model,
            bot_name=bot_name,
            bot_category=bot_category,
            bot_url=bot_url,
            is_mobile=is_mobile,
            is_tablet=is_tablet,
            is_pc=is_pc,
            is_touch_capable=legacy.is_touch_capable,
        )


_OS_NAMES = {"Other": "", "Linux": "GNU/Linux"}


def _version(*parts: str | None) -> str:
    """Join version parts up to the first missing one: ("91", "0", None) -> "91.0"."""
    out: list[str] = []
    for part in parts:
        if not part:
            break
        out.append(part)
    return ".".join(out)


def _platform(ua: str) -> str:
    """The OS's CPU architecture as the UA states it, else "".

    Plain substring tests, in priority order (a regex alternation with word
    boundaries measured ~15 µs a UA). A 32-bit browser on a 64-bit OS
    ("WOW64", "i686 on x86_64") reports the OS: x64.
    """
    low = ua.lower()
    if "x86_64" in low or "x86-64" in low or "win64" in low or "wow64" in low:
        return "x64"
    if "x64" in low or "amd64" in low:
        return "x64"
    if "aarch64" in low or "arm64" in low:
        return "arm64"
    if "arm" in low and _ARM_RE.search(ua):
        return "arm"
    if "i686" in low or "i386" in low or "i586" in low or "i486" in low or "x86" in low:
        return "x86"
    return ""


def _token(regex: re.Pattern[str], ua: str) -> str:
    m = regex.search(ua)
    return m[1] if m else ""


def _major(version: str | None) -> int:
    return int(version) if version and version.isdigit() else 0


def _engine(ua: str, family: str, major: str | None, os_family: str) -> tuple[str, str]:
    """(engine, engine version) from the browser family and the UA's tokens."""
    if os_family == "iOS":
        # Every iOS browser (Safari, CriOS, FxiOS, EdgiOS, ...) must use WebKit.
        return ("WebKit", _token(_WEBKIT_RE, ua)) if "AppleWebKit/" in ua else ("", "")
    if family.startswith("Edge") and "Edge/" in ua:  # pre-Chromium Edge; new Edge says "Edg/"
        return "EdgeHTML", _token(_EDGE_LEGACY_RE, ua)
    if "Trident/" in ua:
        return "Trident", _token(_TRIDENT_RE, ua)
    if family in ("IE", "IE Mobile"):  # IE <= 7 has no Trident token
        return "Trident", ""
    if "Presto/" in ua:
        return "Presto", _token(_PRESTO_RE, ua)
    if family == "Opera" and _major(major) < 15 and "OPR/" not in ua:
        return "Presto", ""
    chrome = _CHROME_RE.search(ua)
    if chrome and int(chrome[1]) >= 28:
        # Chrome, Chromium, Edge >= 79, Opera >= 15, Samsung Internet, Yandex, ...
        # Blink's own version is the Chrome one; we leave it blank, like the seed data.
        return "Blink", ""
    if "AppleWebKit/" in ua:  # Safari, Chrome < 28, old Android browser, ...
        return "WebKit", _token(_WEBKIT_RE, ua)
    if "Gecko/" in ua and "like Gecko" not in ua:  # Firefox, Thunderbird, SeaMonkey, ...
        return "Gecko", _token(_GECKO_RV_RE, ua)
    return "", ""


_backend: _Backend | None = None
_backend_lock = threading.Lock()


def _get_backend() -> _Backend:
    global _backend
    if _backend is None:
        with _backend_lock:
            if _backend is None:
                _backend = _Backend()
    return _backend


class UserAgentParser:
    """Turns User-Agent strings into :class:`Device` objects, cached.

    Meant for the recorder thread. The cache is a plain dict: lookups and
    inserts are atomic under the GIL, so sharing a parser between threads is
    safe; the counters may then be slightly off.
    """

    def __init__(self, cache_size: int = 4096) -> None:
        self._maxsize = max(1, int(cache_size))
        self._cache: dict[str, Device] = {}
        self._hits = 0
        self._misses = 0
        self._errors = 0

    def parse(self, user_agent: str | None) -> Device:
        """The :class:`Device` for ``user_agent``; the same object while cached. Never raises."""
        if type(user_agent) is str:
            # Key by the raw string (no sanitising on a hit), bounded in length.
            key = user_agent if len(user_agent) <= RAW_LIMIT else user_agent[:RAW_LIMIT]
            device = self._cache.get(key)
            if device is not None:
                self._hits += 1
                return device
            return self._parse_new(key)
        if user_agent is None:
            return _EMPTY
        try:
            if isinstance(user_agent, str):  # a str subclass: use its plain value
                return self.parse(str.__str__(user_agent))
        except Exception:
            pass
        self._errors += 1
        return _EMPTY

    def _parse_new(self, key: str) -> Device:
        ua = ""
        try:
            # Control characters out (CR/LF/TAB/NUL, ...), lone surrogates replaced
            # (the Rust parser needs valid UTF-8), capped: before parsing and as stored.
            ua = clean(key, MAX_UA_LENGTH)
            if not ua:
                return _EMPTY
            self._misses += 1
            device = _get_backend().device(ua)
        except Exception:  # hostile input or a parser bug must not reach the recorder
            self._errors += 1
            return _empty(ua)
        bounded_put(self._cache, key, device, self._maxsize)
        return device

    def cache_info(self) -> dict[str, int]:
        """Counters: ``hits``, ``misses`` (parses run), ``errors``, ``size``, ``maxsize``."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "errors": self._errors,
            "size": len(self._cache),
            "maxsize": self._maxsize,
        }

    def clear(self) -> None:
        """Empty the cache (counters are kept)."""
        self._cache.clear()
