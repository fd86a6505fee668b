"""Where, on what and from which machine: the sightings of a session or performer
summarised as the trace views show them (JSON-ready dicts, oldest first).

Input is :meth:`Storage.sightings` (access events grouped by client IP,
network, device and machine id) and, for a performer, their session records
(each one place, device and machine from its start to its last sighting).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..events import Device, Geo, SessionRecord, iso_from_us
from ..storage.base import Sighting

__all__ = ["countries", "devices", "machines", "places"]


def _merge(
    found: dict[Any, dict[str, Any]], key: Any, first: int, last: int, n: int, make: Any
) -> None:
    item = found.get(key)
    if item is None:
        item = found[key] = make()
        item["_first"], item["_last"], item["requests"] = first, last, 0
    item["_first"] = min(item["_first"], first)
    item["_last"] = max(item["_last"], last)
    item["requests"] += n


def _finish(found: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first (by first sighting), times as ISO 8601."""
    out = sorted(found.values(), key=lambda i: (i["_first"], i["_last"]))
    for item in out:
        item["first_seen"] = iso_from_us(item.pop("_first"))
        item["last_seen"] = iso_from_us(item.pop("_last"))
    return out


def _session_sightings(sessions: Iterable[SessionRecord]) -> list[Sighting]:
    """A session as a sighting of no counted request (its requests are counted
    from the access events)."""
    return [
        Sighting(s.ip, True, s.geo, s.device, s.machine_id, s.session_start, s.last_seen, 0)
        for s in sessions
    ]


def _place(ip: str, ip_valid: bool, geo: Geo | None) -> dict[str, Any]:
    return {
        "ip": ip,
        "ip_valid": ip_valid,
        "country_code": geo.country_code if geo else "",
        "country_name": geo.country_name if geo else "",
        "city": geo.city if geo else "",
    }


def places(sightings: Sequence[Sighting]) -> list[dict[str, Any]]:
    """Each client IP (and where it is) with its first and last request: where a
    session was seen from over time."""
    found: dict[Any, dict[str, Any]] = {}
    for s in sightings:
        geo = s.geo
        key = (s.ip, None if geo is None else geo.key)
        _merge(found, key, s.first, s.last, s.requests, lambda s=s: _place(s.ip, s.ip_valid, s.geo))
    return _finish(found)


def countries(
    sightings: Sequence[Sighting], sessions: Iterable[SessionRecord] = ()
) -> list[dict[str, Any]]:
    """Each country seen, first and last time (unlocated requests as country "")."""
    found: dict[Any, dict[str, Any]] = {}
    for s in [*sightings, *_session_sightings(sessions)]:
        geo = s.geo
        code = geo.country_code if geo else ""
        name = geo.country_name if geo else ""
        _merge(
            found,
            code,
            s.first,
            s.last,
            s.requests,
            lambda code=code, name=name: {"country_code": code, "country_name": name},
        )
    return _finish(found)


def _device(device: Device | None) -> dict[str, Any]:
    if device is None:
        return {"user_agent": "", "browser": None, "os": None, "device": None, "bot": None}
    return {"user_agent": device.user_agent, **device.to_dict()}


def devices(
    sightings: Sequence[Sighting], sessions: Iterable[SessionRecord] = ()
) -> list[dict[str, Any]]:
    """Each device (one per distinct User-Agent), first and last time."""
    found: dict[Any, dict[str, Any]] = {}
    for s in [*sightings, *_session_sightings(sessions)]:
        device = s.device
        _merge(
            found,
            None if device is None else device.key,
            s.first,
            s.last,
            s.requests,
            lambda device=device: _device(device),
        )
    return _finish(found)


def machines(
    sightings: Sequence[Sighting], sessions: Iterable[SessionRecord] = ()
) -> list[dict[str, Any]]:
    """Each machine id (the signed ``leza_mid`` cookie: one browser profile)."""
    found: dict[Any, dict[str, Any]] = {}
    for s in [*sightings, *_session_sightings(sessions)]:
        if not s.machine_id:
            continue
        _merge(
            found,
            s.machine_id,
            s.first,
            s.last,
            s.requests,
            lambda mid=s.machine_id: {"machine_identifier": mid},
        )
    return _finish(found)
