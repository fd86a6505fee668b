"""Row codecs of the flat kinds — log, advisory, check: one table row per event,
no shared device/geo/performer rows. ``sql_codecs.py`` registers them in ``KINDS``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Select, Table, select

from ..events import AdvisoryEvent, CheckEvent, Event, LogEvent
from .models import advisory_table, check_table, log_table

__all__ = ["FLAT_KINDS", "flat_columns"]


def flat_columns(table: Table) -> tuple[str, ...]:
    return tuple(table.c.keys())


_LOG_COLS = flat_columns(log_table)
_ADVISORY_COLS = flat_columns(advisory_table)
_CHECK_COLS = flat_columns(check_table)


def _log_row(e: LogEvent) -> tuple[Any, ...]:
    values = {
        "id": e.id, "ts": e.ts, "action": e.action, "level": e.level, "logger": e.logger,
        "message": e.message, "exception": e.exception, "request_id": e.request_id,
        "performer_id": e.performer_id, "route": e.route, "origin": e.origin, "app": e.app,
    }  # fmt: skip
    return tuple(values[c] for c in _LOG_COLS)


def _log_from_row(r: Sequence[Any], _cache: dict[Any, Any]) -> LogEvent:
    f = dict(zip(_LOG_COLS, r, strict=True))
    return LogEvent(
        id=f["id"], ts=f["ts"], level=f["level"], logger=f["logger"], message=f["message"],
        exception=f["exception"], request_id=f["request_id"], performer_id=f["performer_id"],
        route=f["route"], origin=f["origin"], app=f["app"],
    )  # fmt: skip


def _advisory_row(e: AdvisoryEvent) -> tuple[Any, ...]:
    values = {
        "id": e.id, "ts": e.ts, "action": e.action, "severity": e.severity,
        "message": e.message, "evidence": json.dumps(list(e.evidence)),
        "performer_id": e.performer_id, "ip": e.ip,
        "details": json.dumps(e.details, ensure_ascii=False, sort_keys=True, default=str),
        "app": e.app, "request_id": e.request_id, "session_id": e.session_id,
    }  # fmt: skip
    return tuple(values[c] for c in _ADVISORY_COLS)


def _advisory_from_row(r: Sequence[Any], _cache: dict[Any, Any]) -> AdvisoryEvent:
    f = dict(zip(_ADVISORY_COLS, r, strict=True))
    return AdvisoryEvent(
        id=f["id"], ts=f["ts"], rule=f["action"], severity=f["severity"], message=f["message"],
        evidence=json.loads(f["evidence"]), performer_id=f["performer_id"], ip=f["ip"],
        details=json.loads(f["details"]), app=f["app"], request_id=f["request_id"],
        session_id=f["session_id"],
    )  # fmt: skip


def _check_row(e: CheckEvent) -> tuple[Any, ...]:
    values = {
        "id": e.id, "ts": e.ts, "action": e.action, "check_name": e.check, "ok": e.ok,
        "state": e.state, "previous": e.previous, "latency_ms": e.latency_ms,
        "error": e.error, "app": e.app,
    }  # fmt: skip
    return tuple(values[c] for c in _CHECK_COLS)


def _check_from_row(r: Sequence[Any], _cache: dict[Any, Any]) -> CheckEvent:
    f = dict(zip(_CHECK_COLS, r, strict=True))
    return CheckEvent(
        id=f["id"], ts=f["ts"], check=f["check_name"], ok=bool(f["ok"]), state=f["state"],
        previous=f["previous"], latency_ms=f["latency_ms"], error=f["error"], app=f["app"],
    )  # fmt: skip


def _rows(encode: Callable[[Any], tuple[Any, ...]]) -> Callable[..., list[tuple[Any, ...]]]:
    def to_rows(events: Sequence[Event], _refs: Any, _known: Any) -> list[tuple[Any, ...]]:
        return [encode(e) for e in events]

    return to_rows


def _select(table: Table, columns: tuple[str, ...]) -> Callable[[], Select[Any]]:
    return lambda: select(*(table.c[c] for c in columns))


#: kind -> (table, columns, to_rows, select, from_row, performer column,
#: request id column, session id column).
FLAT_KINDS: dict[str, tuple[Any, ...]] = {
    "log": (log_table, _LOG_COLS, _rows(_log_row), _select(log_table, _LOG_COLS),
            _log_from_row, "performer_id", "request_id", None),
    "advisory": (advisory_table, _ADVISORY_COLS, _rows(_advisory_row),
                 _select(advisory_table, _ADVISORY_COLS), _advisory_from_row, "performer_id",
                 "request_id", "session_id"),
    # A check's subject is the check (CheckEvent.performer_id): the performer
    # filter selects one check's probes.
    "check": (check_table, _CHECK_COLS, _rows(_check_row), _select(check_table, _CHECK_COLS),
              _check_from_row, "check_name", None, None),
}  # fmt: skip
