"""``leza status [--since 24h] [--until T] [--json]``: STATE in the terminal.

The same dict as ``leza.query.state()`` and ``<mount>/api/state``: with
``--json`` as it is; otherwise as text, services board first, then traffic,
endpoints, who is on, the recorder and the latest advisories. Text from the
store (route templates, check names, errors, messages) is printed without
control characters, so a stored escape sequence cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..events import iso_from_us, us_from_iso
from ..state.build import WindowError
from .common import CliError, Context, parse_time, parse_until

__all__ = ["add_arguments", "render", "run"]

HELP = "show the state at a glance: services, traffic, endpoints, who is on, the recorder"

#: C0 and C1 controls, DEL, and the bidirectional overrides (they reorder what follows).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_ENDPOINTS = 20  # rows of the endpoints table in text (--json has them all)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        type=parse_time,
        metavar="WHEN",
        help="start of the period: a duration ago (1h, 7d) or an ISO 8601 date or time "
        "(default: 24 hours before --until)",
    )
    parser.add_argument(
        "--until", type=parse_until, metavar="WHEN", help="end of the period (default: now)"
    )
    parser.add_argument("--json", action="store_true", help="print the state as JSON")


def run(ctx: Context, args: argparse.Namespace) -> int:
    ctx.storage()
    leza = ctx.leza()
    since = None if args.since is None else iso_from_us(args.since)
    until = None if args.until is None else iso_from_us(args.until)
    try:
        state = leza.query.state(since=since, until=until)
    except WindowError as exc:
        raise CliError(f"--{'since' if exc.field == 'from' else 'until'}: {exc}") from None
    if args.json:
        text = json.dumps(state, ensure_ascii=False, indent=2)
        ctx.stdout.write(_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
    else:
        ctx.stdout.write(render(state, storage=leza.storage.describe()))
    return 0


#: C1 controls and the bidirectional overrides are legal raw in JSON text; written as
#: escapes, a terminal never sees one (C0 ones JSON escapes itself).
_C1 = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _c(value: Any, width: int | None = None) -> str:
    """One terminal-safe cell."""
    text = "-" if value is None or value == "" else _UNSAFE.sub("?", str(value))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _n(n: int | None, noun: str) -> str:
    """``"1 request"``, ``"2 requests"``, ``"- requests"`` (unknown)."""
    if n is None:
        return f"- {noun}s"
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def _pct(share: float | None) -> str:
    if share is None:
        return "-"
    text = f"{share * 100:.2f}"
    return f"{share * 100:.4f} %" if share < 1 and text == "100.00" else f"{text} %"


def _ago(iso: str | None, now: int) -> str:
    if not iso:
        return "-"
    seconds = max(0, (now - us_from_iso(iso)) // 1_000_000)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _table(heads: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)
    ]

    def line(cells: Sequence[str]) -> str:
        return (
            "  "
            + "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )

    return [line(heads), *(line(r) for r in rows)]


def _services(services: Sequence[Mapping[str, Any]], now: int) -> list[str]:
    if not services:
        return ["SERVICES   no availability checks recorded"]
    rows = []
    for s in services:
        up = s["uptime"]
        incidents = s["incidents"]
        if incidents:
            last = incidents[-1]
            what = "ongoing" if last["ongoing"] else "recovered"
            told = f"{len(incidents)}, last {what} after {_duration(float(last['duration_s']))}"
        else:
            told = "none"
        rows.append(
            [
                _c(s["name"], 30),
                str(s["state"]).upper(),
                _ago(s.get("since"), now),
                _ms(s["latency_ms"]),
                _pct(up["24h"]),
                _pct(up["7d"]),
                _pct(up["30d"]),
                told,
                _c(s.get("error"), 60) if s.get("error") else "",
            ]
        )
    heads = (
        "SERVICE",
        "STATE",
        "SINCE",
        "LATENCY",
        "UP 24H",
        "UP 7D",
        "UP 30D",
        "INCIDENTS IN PERIOD",
        "ERROR",
    )
    return ["SERVICES", *_table(heads, rows, {3, 4, 5, 6})]


def _traffic(state: Mapping[str, Any]) -> list[str]:
    traffic = state.get("traffic") or {}
    if not traffic.get("kept"):
        return [f"TRAFFIC    {_c(traffic.get('note'))}"]
    n = state["requests"]
    if not n:
        empty = (
            "no traffic recorded yet"
            if not state["recorder"]["newest"].get("access")
            else ("no requests in this period")
        )
        return [f"TRAFFIC    0 requests ({empty})"]
    lat = state["latency_ms"]
    rate = state["server_errors"] / n
    return [
        f"TRAFFIC    {_n(n, 'request')}, {_n(state['server_errors'], 'server error')} "
        f"({_pct(rate)}), {_n(state['client_errors'], 'client error')}, "
        f"{state['denied']:,} denied; "
        f"latency p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}, p99 {_ms(lat['p99'])}"
    ]


def _endpoints(endpoints: Sequence[Mapping[str, Any]], now: int) -> list[str]:
    if not endpoints:
        return []
    rows = [
        [
            _c(e["method"]),
            _c(e["route"], 60),
            f"{e['requests']:,}",
            f"{e['server_errors']:,}",
            f"{e['denied']:,}",
            _ms(e["latency_ms"]["p50"]),
            _ms(e["latency_ms"]["p95"]),
            _ms(e["latency_ms"]["p99"]),
            _ago(e["last_seen"], now),
        ]
        for e in endpoints[:_ENDPOINTS]
    ]
    heads = ("METHOD", "ROUTE", "REQUESTS", "5XX", "DENIED", "P50", "P95", "P99", "LAST SEEN")
    more = len(endpoints) - _ENDPOINTS
    tail = [f"  … and {more} more (--json lists them all)"] if more > 0 else []
    return ["ENDPOINTS", *_table(heads, rows, {2, 3, 4, 5, 6, 7}), *tail]


def _who(s: Mapping[str, Any]) -> list[str]:
    countries = ", ".join(
        f"{_c(c['country_name'] or c['country_code'] or 'unknown')} {c['active']:,}"
        for c in s["by_country"][:8]
    )
    devices = ", ".join(
        f"{_c(d['device_type'] or 'unknown')} {d['active']:,}" for d in s["by_device"]
    )
    lines = [
        f"WHO IS ON  {_n(s['active'], 'active session')}"
        + (f" ({countries}; {devices})" if s["active"] else "")
    ]
    lines.append(
        f"           in the period: {_n(s['performers'], 'performer')} seen, "
        f"{_n(s['logins'], 'login')}, {_n(s['login_failures'], 'failed login')}"
    )
    return lines


def _recorder(r: Mapping[str, Any], now: int) -> list[str]:
    if r["live"]:
        head = (
            f"RECORDER   this process: {r['written']:,} written, {r['dropped']:,} dropped, "
            f"{r['pending']:,} pending, {r['spilled']:,} spilled"
        )
    else:
        head = "RECORDER   this process records nothing (each app process: stats(), /metrics)"
    files = r["spill_files"]
    spill = "unknown" if files is None else f"{files:,} ({r['spill_bytes']:,} bytes)"
    newest = ", ".join(f"{kind} {_ago(at, now)}" for kind, at in r["newest"].items() if at)
    return [head, f"           spill files waiting: {spill}; newest stored: {newest or 'none'}"]


def _advisories(items: Sequence[Mapping[str, Any]], now: int) -> list[str]:
    if not items:
        return ["ADVISORIES none in the period"]
    return ["ADVISORIES"] + [
        f"  {str(a.get('severity', '')).upper():<8}  {_c(a.get('message'), 110)}  "
        f"({_c(a.get('rule') or a.get('action'))}, {_ago(a.get('timestamp'), now)})"
        for a in items
    ]


def render(state: Mapping[str, Any], *, storage: str = "", now: int | None = None) -> str:
    """The state as terminal text (what ``leza status`` prints)."""
    now = time.time_ns() // 1000 if now is None else now
    where = f", {_c(storage)}" if storage else ""
    lines = [
        f"STATE      {state['from'][:19].replace('T', ' ')} to "
        f"{state['to'][:19].replace('T', ' ')} UTC{where}",
        "",
        *_services(state["services"], now),
        "",
        *_traffic(state),
        *_endpoints(state["endpoints"], now),
        "",
        *_who(state["sessions"]),
        *_recorder(state["recorder"], now),
        "",
        *_advisories(state["advisories"], now),
    ]
    return "\n".join(lines) + "\n"
