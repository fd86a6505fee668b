"""The event model: what the recorder hands to storage and what queries return.

Events keep scalar fields flat (cheap to turn into a row) and hold the wide,
repetitive parts — device, geo, performer — as shared immutable objects that
storage writes once per distinct value and references by ``key``.

``to_dict()`` is the public JSON shape (DESIGN.md names: ``_id``, ``browser``,
``os``, ``device``, ``bot``, ``geoLocationInfoOfIp``, ``performer``, …) and
``from_dict()`` reverses it exactly, so a spilled event replays unchanged
(tests/test_events_golden.py pins it).

One module per concern: :mod:`.base` (the base class, times, chains, keys),
:mod:`.dimensions` (Device, Geo), :mod:`.access`, :mod:`.session`,
:mod:`.audit`, :mod:`.log`, :mod:`.advisory`, :mod:`.check`; every name is
importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .access import ACCESS_FIELDS, AccessEvent
from .advisory import SEVERITIES, AdvisoryEvent
from .audit import AuditEvent
from .base import (
    PRIORITY_ACTIONS,
    Event,
    decode_chain,
    encode_chain,
    iso_from_us,
    performer_key,
    us_from_iso,
)
from .base import iso_ms_from_us as iso_ms_from_us  # importable from here, as before
from .base import ua_key as ua_key
from .check import CHECK_STATES, CheckEvent
from .dimensions import Device, Geo
from .log import LOG_ACTIONS as LOG_ACTIONS
from .log import LogEvent, log_action
from .session import END_REASONS as END_REASONS
from .session import SessionEvent, SessionRecord

__all__ = [
    "ACCESS_FIELDS",
    "CHECK_STATES",
    "PRIORITY_ACTIONS",
    "SEVERITIES",
    "AccessEvent",
    "AdvisoryEvent",
    "AuditEvent",
    "CheckEvent",
    "Device",
    "Event",
    "Geo",
    "LogEvent",
    "SessionEvent",
    "SessionRecord",
    "decode_chain",
    "encode_chain",
    "iso_from_us",
    "log_action",
    "performer_key",
    "us_from_iso",
]

EVENT_TYPES: dict[str, type[Event]] = {
    "access": AccessEvent,
    "advisory": AdvisoryEvent,
    "audit": AuditEvent,
    "check": CheckEvent,
    "log": LogEvent,
    "session": SessionEvent,
}


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild any event from its ``to_dict()`` form (spill replay, JSONL storage)."""
    kind = data.get("kind")
    cls = EVENT_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}")
    return cls.from_dict(data)  # type: ignore[attr-defined,no-any-return]
