"""How records are written: JSON Lines, CSV (flattened, stable header) and text lines.

CSV flattening (documented in docs/cli.md):

* a nested object of the record schema (:data:`NESTED`: ``browser``, ``os``,
  ``device``, ``bot``, ``geoLocationInfoOfIp``, ``performer``, ``actor``, …)
  becomes one column per field, named ``parent.field``; when the object is
  null every one of its columns is empty;
* lists and free-form objects (``proxy_chain``, ``performer.organizations``,
  an audit row's ``before``/``after``/``diff``) are one column of compact JSON;
* null is an empty cell, booleans are ``true``/``false``;
* the header of a kind is fixed: built from a fully populated sample record
  of that kind, so every export of one version has the same columns in the
  same order, whatever the rows hold.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..events import (
    AccessEvent,
    AdvisoryEvent,
    AuditEvent,
    CheckEvent,
    Device,
    Geo,
    LogEvent,
    SessionRecord,
)
from ..performer import Organization, Performer

__all__ = ["NESTED", "columns_for", "flatten", "jsonl_line", "text_line"]

#: Keys whose object values are spread over ``key.field`` columns.
NESTED = frozenset(
    {"browser", "os", "device", "bot", "geoLocationInfoOfIp", "performer", "actor",
     "device_info", "geo"}
)  # fmt: skip


def _sample_performer() -> Performer:
    return Performer(
        id="p",
        organization_unit_labels=("l",),
        organizations=(Organization(id="o"),),
    )


def _sample(kind: str) -> dict[str, Any] | None:
    """A record of ``kind`` with every optional part present (the header's source)."""
    device = Device(key="d", user_agent="ua", bot_name="bot")
    geo = Geo(key="g")
    if kind == "access":
        return AccessEvent.build(
            id="i", ts=0, action="access", method="GET", endpoint="/", route="/", status=200,
            duration_us=0, outcome="success", reason="", request_id="r", client_ip="",
            ip_valid=True, peer_ip="", device=device, geo=geo, performer=_sample_performer(),
            headers={"h": "v"},  # record_headers: one JSON column
        ).to_dict()  # fmt: skip
    if kind == "session":
        return SessionRecord(
            id="s", app="a", session_start=0, last_seen=0, performer=_sample_performer(),
            device=device, geo=geo,
        ).to_dict()  # fmt: skip
    if kind == "audit":
        return AuditEvent(
            id="i", ts=0, action="update", entity_type="t", entity_id="1",
            actor=_sample_performer(), before={}, after={},
        ).to_dict()  # fmt: skip
    if kind == "log":
        return LogEvent(id="i", ts=0, level=20, logger="l", message="m").to_dict()
    if kind == "advisory":
        return AdvisoryEvent(id="i", ts=0, rule="r", severity="info", message="m").to_dict()
    if kind == "check":
        return CheckEvent(id="i", ts=0, check="c", ok=True, state="up", previous="up").to_dict()
    return None


def _columns(record: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in record.items():
        if key in NESTED and isinstance(value, Mapping):
            out.extend(_columns(value, f"{prefix}{key}."))
        else:
            out.append(prefix + key)
    return out


@functools.cache
def _fixed_columns(kind: str) -> tuple[str, ...] | None:
    sample = _sample(kind)
    return None if sample is None else tuple(_columns(sample))


def columns_for(kind: str, first: Mapping[str, Any] | None = None) -> list[str]:
    """The CSV header of ``kind``; kinds without a sample take ``first``'s shape."""
    fixed = _fixed_columns(kind)
    if fixed is not None:
        return list(fixed)
    return [] if first is None else _columns(first)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``record`` as CSV cells keyed by column name (see the module docstring)."""
    out: dict[str, str] = {}
    for key, value in record.items():
        if key in NESTED and isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = _cell(value)
    return out


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """Defuse a cell a spreadsheet would run as a formula (``--spreadsheet-safe``)."""
    return "'" + cell if cell.startswith(_FORMULA) else cell


def csv_row(columns: Iterable[str], cells: Mapping[str, str], safe: bool = False) -> list[str]:
    row = [cells.get(c, "") for c in columns]
    return [spreadsheet_safe(c) for c in row] if safe else row


def jsonl_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


# --------------------------------------------------------------------------- text lines

_CONTROL = dict.fromkeys((*range(32), 127), "?")


def _clean(value: Any, width: int | None = None) -> str:
    """One terminal-safe cell: no control characters (no escape sequences)."""
    text = "-" if value in (None, "") else str(value).translate(_CONTROL)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _who(record: Mapping[str, Any], key: str = "performer") -> str:
    p = record.get(key) or {}
    return _clean(p.get("id"))


def _where(record: Mapping[str, Any], key: str = "geoLocationInfoOfIp") -> str:
    geo = record.get(key) or {}
    return _clean(", ".join(x for x in (geo.get("city"), geo.get("country_code")) if x))


def _what(record: Mapping[str, Any]) -> str:
    if record.get("bot"):
        return _clean(f"bot: {record['bot'].get('name', '')}")
    parts = [(record.get(k) or {}).get(f, "") for k, f in
             (("browser", "name"), ("os", "name"), ("device", "type"))]  # fmt: skip
    return _clean(" / ".join(p for p in parts if p))


def text_line(kind: str, record: Mapping[str, Any]) -> str:
    """One event as a line for ``leza tail`` (two spaces between fields)."""
    if kind == "access":
        ip = record.get("ip", "") + ("" if record.get("ip_valid", True) else " (invalid)")
        fields = [
            record.get("timestamp"), record.get("action"), record.get("endpoint_type"),
            _clean(record.get("endpoint"), 80), record.get("status"), _who(record), _clean(ip),
            _where(record), _what(record), _clean(record.get("reason"), 120),
        ]  # fmt: skip
    elif kind == "session":
        state = "active" if record.get("active") else f"ended ({record.get('end_reason')})"
        fields = [
            record.get("session_start"), record.get("_id"), _who(record), state,
            record.get("ip"), _where(record), _what(record),
        ]  # fmt: skip
    elif kind == "audit":
        changed = ",".join(sorted((record.get("diff") or {}).keys()))
        fields = [
            record.get("timestamp"), record.get("action"),
            f"{record.get('entity_type')}:{record.get('entity_id')}", _who(record, "actor"),
            _clean(changed, 80), _clean(record.get("reason"), 80),
        ]  # fmt: skip
    elif kind == "log":
        fields = [
            record.get("timestamp"), record.get("action"), record.get("logger"),
            _clean(record.get("message"), 160), record.get("request_id"),
            record.get("performer_id"),
        ]  # fmt: skip
    elif kind == "check":
        fields = [
            record.get("timestamp"), record.get("check"), record.get("state"),
            "ok" if record.get("ok") else "failed", record.get("latency_ms"),
            _clean(record.get("error"), 160),
        ]  # fmt: skip
    elif kind == "advisory":
        fields = [
            record.get("timestamp"), record.get("severity"), record.get("action"),
            record.get("performer_id"), record.get("ip"), _clean(record.get("message"), 160),
        ]  # fmt: skip
    else:
        fields = [record.get("timestamp"), record.get("action")]
        fields += [v for k, v in record.items() if k not in ("timestamp", "action", "kind")]
    return "  ".join(_clean(f) for f in fields) + "\n"
