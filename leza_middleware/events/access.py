"""ACCESS: one event per HTTP request, its scalar fields held in one row tuple."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, ClassVar

from ..performer import Performer
from .base import Event, decode_chain, encode_chain, iso_from_us, performer_key, us_from_iso
from .dimensions import Device, Geo

__all__ = ["ACCESS_FIELDS", "AccessEvent"]

#: The scalar fields of an access event, in the order of ``AccessEvent.row``
#: (which is also the column order of the SQL table: rows are written as-is).
ACCESS_FIELDS = (
    "id",
    "ts",
    "action",
    "method",
    "endpoint",
    "route",
    "status",
    "duration_us",
    "outcome",
    "reason",
    "request_id",
    "client_ip",
    "ip_valid",
    "peer_ip",
    "proxy_chain",
    "scheme",
    "host",
    "app",
    "device_key",
    "geo_key",
    "performer_id",
    "performer_key",
    "machine_id",
    "session_hash",
    # JSON object of the ``record_headers`` the request carried, None without any
    # (docs/privacy.md): last, so the columns before it keep their positions.
    "headers",
)


def _field(index: int) -> Any:
    get = itemgetter(index)
    return property(lambda self: get(self.row))


class AccessEvent(Event):
    """One HTTP request (or websocket connect) as an auditor reads it.

    The scalar fields live in one tuple, :attr:`row` (see :data:`ACCESS_FIELDS`),
    so the recorder builds an event with one tuple and storage writes that tuple
    as the SQL row without copying field by field; ``device``, ``geo`` and
    ``performer`` are the shared objects the row's ``*_key`` columns reference.
    Build one with :meth:`build` (keywords) or ``AccessEvent(row, device, geo,
    performer)``.

    Not a dataclass like the other kinds: the recorder makes one per request,
    and one ready tuple is ~3x cheaper to build than 25 fields and needs no
    copy into a row (bench/bench_events.py).
    """

    __slots__ = ("device", "geo", "performer", "row")
    kind: ClassVar[str] = "access"

    id: str = _field(0)
    ts: int = _field(1)  # µs since the epoch, UTC
    action: str = _field(2)  # "access", "denied", "login", "logout", "login_failed", ...
    method: str = _field(3)  # the endpoint type: GET, POST, ..., WS for a websocket
    endpoint: str = _field(4)  # path + query with secret values filtered
    route: str | None = _field(5)  # route template when the framework exposes it
    status: int = _field(6)
    duration_us: int = _field(7)
    outcome: str = _field(8)  # "success", "denied", "failure", "error"
    reason: str = _field(9)
    request_id: str = _field(10)
    client_ip: str = _field(11)  # as received when invalid (then ip_valid is False)
    ip_valid: bool = _field(12)
    peer_ip: str = _field(13)
    proxy_chain_text: str = _field(14)  # encode_chain() of the chain
    scheme: str = _field(15)
    host: str = _field(16)
    app: str = _field(17)
    device_key: str | None = _field(18)
    geo_key: str | None = _field(19)
    performer_id: str | None = _field(20)
    performer_key: str | None = _field(21)
    machine_id: str | None = _field(22)
    session_hash: str | None = _field(23)
    headers_text: str | None = _field(24)  # JSON object of the recorded headers

    def __init__(
        self,
        row: tuple[Any, ...],
        device: Device | None = None,
        geo: Geo | None = None,
        performer: Performer | None = None,
    ) -> None:
        self.row = row
        self.device = device
        self.geo = geo
        self.performer = performer

    @classmethod
    def build(
        cls,
        *,
        id: str,
        ts: int,
        action: str,
        method: str,
        endpoint: str,
        route: str | None,
        status: int,
        duration_us: int,
        outcome: str,
        reason: str,
        request_id: str,
        client_ip: str,
        ip_valid: bool,
        peer_ip: str,
        proxy_chain: Sequence[str] = (),
        scheme: str = "http",
        host: str = "",
        app: str = "app",
        device: Device | None = None,
        geo: Geo | None = None,
        performer: Performer | None = None,
        machine_id: str | None = None,
        session_hash: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AccessEvent:
        row = (
            id, ts, action, method, endpoint, route, status, duration_us, outcome, reason,
            request_id, client_ip, bool(ip_valid), peer_ip, encode_chain(proxy_chain), scheme,
            host, app,
            None if device is None else device.key,
            None if geo is None else geo.key,
            None if performer is None else performer.id,
            None if performer is None else performer_key(performer),
            machine_id, session_hash,
            json.dumps(dict(headers), ensure_ascii=False) if headers else None,
        )  # fmt: skip
        return cls(row, device, geo, performer)

    @property
    def proxy_chain(self) -> tuple[str, ...]:
        return decode_chain(self.row[14])

    @property
    def headers(self) -> dict[str, str] | None:
        """The recorded request headers (``record_headers``), None without any."""
        text = self.row[24] if len(self.row) > 24 else None
        return None if text is None else dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccessEvent):
            return NotImplemented
        return (self.row, self.device, self.geo, self.performer) == (
            other.row,
            other.device,
            other.geo,
            other.performer,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AccessEvent(id={self.id!r}, {self.method} {self.endpoint!r} -> {self.status})"

    def to_dict(self) -> dict[str, Any]:
        r = self.row
        device = self.device
        out: dict[str, Any] = {
            "_id": r[0],
            "kind": "access",
            "timestamp": iso_from_us(r[1]),
            "action": r[2],
            "endpoint": r[4],
            "endpoint_type": r[3],
            "route": r[5],
            "status": r[6],
            "duration_ms": r[7] / 1000,
            "outcome": r[8],
            "reason": r[9],
            "request_id": r[10],
            "ip": r[11],
            "ip_valid": bool(r[12]),
            "peer_ip": r[13],
            "proxy_chain": list(decode_chain(r[14])),
            "scheme": r[15],
            "host": r[16],
            "app": r[17],
            "user_agent": device.user_agent if device is not None else "",
        }
        if device is not None:
            out.update(device.to_dict())
        else:
            out.update({"browser": None, "os": None, "device": None, "bot": None})
        out["geoLocationInfoOfIp"] = self.geo.to_dict(r[11]) if self.geo else None
        out["performer"] = self.performer.to_dict() if self.performer else None
        out["machine_identifier"] = r[22]
        out["session_id_hash"] = r[23]
        if len(r) > 24 and r[24] is not None:  # only when record_headers stored some
            out["headers"] = json.loads(r[24])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccessEvent:
        ua = data.get("user_agent") or ""
        device = Device.from_dict(ua, data) if data.get("browser") is not None else None
        geo_data = data.get("geoLocationInfoOfIp")
        perf = data.get("performer")
        return cls.build(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            action=data["action"],
            method=data["endpoint_type"],
            endpoint=data["endpoint"],
            route=data.get("route"),
            status=int(data["status"]),
            duration_us=round(float(data["duration_ms"]) * 1000),
            outcome=data["outcome"],
            reason=data["reason"],
            request_id=data["request_id"],
            client_ip=data["ip"],
            ip_valid=bool(data["ip_valid"]),
            peer_ip=data["peer_ip"],
            proxy_chain=tuple(data.get("proxy_chain") or ()),
            scheme=data["scheme"],
            host=data["host"],
            app=data["app"],
            device=device,
            geo=Geo.from_dict(geo_data) if geo_data else None,
            performer=Performer.from_dict(perf) if perf else None,
            machine_id=data.get("machine_identifier"),
            session_hash=data.get("session_id_hash"),
            headers=data.get("headers"),
        )
