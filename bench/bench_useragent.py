"""User-Agent parsing: our cached ua-parser-rs enricher vs ``user_agents.parse``.

    python bench/bench_useragent.py [--corpus FILE.json]

The mix is the shared 1000-UA corpus (``../shared/testdata/ua/uas_1000.json``
beside the repo) when present, else ~50 real UAs built in here. Prints median
and p95 in µs per UA for, side by side in one run:

- cold, first pass: a fresh process-wide resolver's first look at each UA
  (the Rust regex engine still building its lazy DFAs);
- cold: a fresh ``UserAgentParser`` (empty cache), each UA once, after that;
- warm: cache hits;
- ``user_agents.parse``: the legacy pure-Python parser, its cache cleared.

Budget (DESIGN.md): cold ≤ 50 µs, warm ≤ 2 µs median. No asserts.
"""

# ruff: noqa: E501  (real User-Agent strings are long)
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared/testdata/ua/uas_1000.json"

BUILTIN_UAS = [
    # desktop browsers
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 OPR/111.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19582",
    "Mozilla/5.0 (Windows NT 6.1; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/109.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 YaBrowser/24.6.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Vivaldi/6.8.3381.44",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/91.0.4472.114 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (X11; Linux aarch64; rv:109.0) Gecko/20100101 Firefox/115.0",
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Opera/9.80 (Windows NT 6.1; U; en) Presto/2.10.289 Version/12.02",
    # phones and tablets
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/126.0.6478.153 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/127.0 Mobile/15E148 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 339.0.3.12.91 (iPhone14,5; iOS 17_5_1; en_US; en; scale=3.00; 1170x2532; 621240880)",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S901B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S901B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 12; M2101K6G) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Android 14; Mobile; rv:127.0) Gecko/127.0 Firefox/127.0",
    "Mozilla/5.0 (Linux; Android 11; SM-A125F Build/RP1A.200720.012; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/126.0.6478.134 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; U; Android 4.0.3; en-us; KFTT Build/IML74K) AppleWebKit/534.30 (KHTML, like Gecko) Version/4.0 Safari/534.30",
    "Mozilla/5.0 (Linux; Android 10; HarmonyOS; ELS-NX9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0.4844.88 HuaweiBrowser/14.0.5.303 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; MSIE 10.0; Windows Phone 8.0; Trident/6.0; IEMobile/10.0; ARM; Touch; NOKIA; Lumia 920)",
    "Opera/9.80 (Android; Opera Mini/36.2.2254/119.132; U; id) Presto/2.12.423 Version/12.16",
    # bots, tools, clients
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.126 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.1; +https://openai.com/gptbot)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "curl/7.68.0",
    "Wget/1.21.2",
    "python-requests/2.31.0",
    "PostmanRuntime/7.39.0",
    "okhttp/4.12.0",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.12026; Pro)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:109.0) Gecko/20100101 Thunderbird/115.3.1",
]


def _timed(fn: Callable[[str], object], uas: Sequence[str]) -> list[float]:
    """Per-call µs of fn over uas."""
    clock = time.perf_counter_ns
    out: list[float] = []
    gc.collect()
    for ua in uas:
        t0 = clock()
        fn(ua)
        out.append((clock() - t0) / 1000)
    return out


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--corpus", type=Path, default=None, help="JSON list of UA strings")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    import user_agents
    from ua_parser import user_agent_parser

    from leza_middleware.enrich.useragent import UserAgentParser, _get_backend

    corpus_path = args.corpus or (SHARED_CORPUS if SHARED_CORPUS.exists() else None)
    if corpus_path is not None:
        uas: list[str] = json.loads(corpus_path.read_text("utf-8"))
        source = str(corpus_path)
    else:
        uas = list(BUILTIN_UAS)
        source = "built-in list"
    uas = list(dict.fromkeys(uas))  # each UA once
    print(f"mix: {len(uas)} distinct UAs from {source}")
    print(f"python {sys.version.split()[0]}")

    t0 = time.perf_counter()
    _get_backend()  # one-time: builds the Rust resolver, imports user_agents
    print(f"one-time resolver build: {(time.perf_counter() - t0) * 1000:.0f} ms\n")

    first = _timed(UserAgentParser(cache_size=len(uas) + 1).parse, uas)
    fresh = UserAgentParser(cache_size=len(uas) + 1)
    cold = _timed(fresh.parse, uas)
    warm = _timed(fresh.parse, uas)

    legacy_cache = getattr(user_agent_parser, "_PARSE_CACHE", None)

    def legacy(ua: str) -> object:
        if legacy_cache is not None:
            legacy_cache.clear()  # user_agents/ua_parser keep a 200-entry cache
        return user_agents.parse(ua)

    old = _timed(legacy, uas)

    rows = [
        ("cold, first pass in process", first),
        ("cold (cache miss)", cold),
        ("warm (cache hit)", warm),
        ("user_agents.parse (legacy)", old),
    ]
    print(f"{'':32s} {'median µs':>10s} {'p95 µs':>10s} {'mean µs':>10s}")
    for name, samples in rows:
        print(
            f"{name:32s} {statistics.median(samples):10.2f} {_p(samples, 0.95):10.2f}"
            f" {statistics.fmean(samples):10.2f}"
        )
    legacy_median = statistics.median(old)
    print()
    print(f"legacy / cold (median):        {legacy_median / statistics.median(cold):6.1f}x")
    print(f"legacy / first pass (median):  {legacy_median / statistics.median(first):6.1f}x")
    print(f"legacy / warm (median):        {legacy_median / statistics.median(warm):6.0f}x")
    print("budget: cold <= 50 µs, warm <= 2 µs median")
    print(f"cache: {fresh.cache_info()}")


if __name__ == "__main__":
    main()
