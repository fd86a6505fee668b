"""The event model: what the recorder hands to storage and what queries return.

Events keep scalar fields flat (cheap to turn into a row) and hold the wide,
repetitive parts — device, geo, performer — as shared immutable objects that
storage writes once per distinct value and references by ``key``.

``to_dict()`` is the public JSON shape (DESIGN.md names: ``_id``, ``browser``,
``os``, ``device``, ``bot``, ``geoLocationInfoOfIp``, ``performer``, …) and
``from_dict()`` reverses it exactly, so a spilled event replays unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any, ClassVar

from .performer import Performer

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

# Actions whose events must never be dropped for lack of memory: they go to the
# spill file instead (DESIGN.md, reliability contract).
PRIORITY_ACTIONS = frozenset({"login", "logout", "login_failed", "session_start", "session_end"})


def iso_from_us(ts_us: int) -> str:
    """UTC ISO 8601 with microseconds and a ``Z`` suffix."""
    seconds, micros = divmod(ts_us, 1_000_000)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


def us_from_iso(value: str) -> int:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def ua_key(user_agent: str) -> str:
    """Stable key of a User-Agent string (the same in every process and host)."""
    return hashlib.blake2b(user_agent.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Device:
    """What a User-Agent string says about the client. One per distinct UA."""

    key: str
    user_agent: str
    browser_type: str = ""  # "browser", "bot", "email client", "" when unknown
    browser_name: str = ""
    browser_version: str = ""
    engine: str = ""
    engine_version: str = ""
    os_name: str = ""
    os_version: str = ""
    os_platform: str = ""
    device_type: str = ""  # "desktop", "smartphone", "tablet", "" when unknown
    device_brand: str = ""
    device_model: str = ""
    bot_name: str | None = None  # set only for bots
    bot_category: str = ""
    bot_url: str = ""
    is_mobile: bool = False
    is_tablet: bool = False
    is_pc: bool = False
    is_touch_capable: bool = False

    @property
    def is_bot(self) -> bool:
        return self.bot_name is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "browser": {
                "type": self.browser_type,
                "name": self.browser_name,
                "version": self.browser_version,
                "engine": self.engine,
                "engineVersion": self.engine_version,
            },
            "os": {"name": self.os_name, "version": self.os_version, "platform": self.os_platform},
            "device": {
                "type": self.device_type,
                "brand": self.device_brand,
                "model": self.device_model,
                "is_mobile": self.is_mobile,
                "is_tablet": self.is_tablet,
                "is_pc": self.is_pc,
                "is_touch_capable": self.is_touch_capable,
            },
            "bot": (
                None
                if self.bot_name is None
                else {"name": self.bot_name, "category": self.bot_category, "url": self.bot_url}
            ),
        }

    @classmethod
    def from_dict(cls, user_agent: str, data: Mapping[str, Any]) -> Device:
        b = data.get("browser") or {}
        o = data.get("os") or {}
        d = data.get("device") or {}
        bot = data.get("bot")
        return cls(
            key=ua_key(user_agent),
            user_agent=user_agent,
            browser_type=b.get("type", ""),
            browser_name=b.get("name", ""),
            browser_version=b.get("version", ""),
            engine=b.get("engine", ""),
            engine_version=b.get("engineVersion", ""),
            os_name=o.get("name", ""),
            os_version=o.get("version", ""),
            os_platform=o.get("platform", ""),
            device_type=d.get("type", ""),
            device_brand=d.get("brand", ""),
            device_model=d.get("model", ""),
            bot_name=None if bot is None else bot.get("name", ""),
            bot_category="" if bot is None else bot.get("category", ""),
            bot_url="" if bot is None else bot.get("url", ""),
            is_mobile=bool(d.get("is_mobile", False)),
            is_tablet=bool(d.get("is_tablet", False)),
            is_pc=bool(d.get("is_pc", False)),
            is_touch_capable=bool(d.get("is_touch_capable", False)),
        )


@dataclass(frozen=True, slots=True)
class Geo:
    """Where an IP network is. One per distinct network of the GeoIP database."""

    key: str  # the database network the IP fell in, e.g. "81.2.69.128/26"
    country_code: str = ""
    country_name: str = ""
    region_code: str = ""
    region_name: str = ""
    city: str = ""
    zip_code: str = ""
    time_zone: str = ""
    latitude: float | None = None
    longitude: float | None = None
    metro_code: int = 0

    def to_dict(self, ip: str) -> dict[str, Any]:
        return {
            "ip": ip,
            "country_code": self.country_code,
            "country_name": self.country_name,
            "region_code": self.region_code,
            "region_name": self.region_name,
            "city": self.city,
            "zip_code": self.zip_code,
            "time_zone": self.time_zone,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "metro_code": self.metro_code,
            "network": self.key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geo:
        return cls(
            key=str(data.get("network") or ""),
            country_code=data.get("country_code", ""),
            country_name=data.get("country_name", ""),
            region_code=data.get("region_code", ""),
            region_name=data.get("region_name", ""),
            city=data.get("city", ""),
            zip_code=data.get("zip_code", ""),
            time_zone=data.get("time_zone", ""),
            latitude=data.get("latitude"),
            longitude=data.get("longitude"),
            metro_code=int(data.get("metro_code") or 0),
        )


class Event:
    """Base of every recorded event: an id, a kind, a UTC time in µs."""

    __slots__ = ()
    kind: ClassVar[str]
    id: str
    ts: int
    action: str

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def priority(self) -> bool:
        """True when this event may be spilled but never dropped."""
        return self.action in PRIORITY_ACTIONS


def encode_chain(chain: Sequence[str]) -> str:
    """A proxy chain as one text value: comma-joined, JSON when that is ambiguous."""
    if not chain:
        return ""
    text = ",".join(chain)
    # JSON when an element holds a comma, when it would read back as JSON, or
    # when the chain is [""] (which would read back as empty).
    if text.count(",") != len(chain) - 1 or text.startswith("[") or not text:
        return json.dumps(list(chain), ensure_ascii=False)
    return text


def decode_chain(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    if text.startswith("["):
        return tuple(json.loads(text))
    return tuple(text.split(","))


def performer_key(performer: Performer) -> str:
    """Stable key of one performer value: a hash of its canonical JSON."""
    return hashlib.blake2b(performer.to_json().encode("utf-8"), digest_size=16).hexdigest()


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


def iso_ms_from_us(ts_us: int) -> str:
    """UTC ISO 8601 with milliseconds, as the session record shows times."""
    return iso_from_us(ts_us)[:-4] + "Z"


#: Why a session ended.
END_REASONS = frozenset({"logout", "idle_timeout", "absolute_timeout", "revoked"})


class SessionEvent(Event):
    """A change to one user session: it started, was seen again, or ended.

    Storage folds these into one record per session (see :class:`SessionRecord`):
    the earliest start and the first non-empty facts win, ``last_seen`` only
    moves forward and the first end sticks. Folding is idempotent, so a
    replayed or duplicated change stores nothing twice.
    """

    __slots__ = (
        "action",
        "app",
        "device",
        "end_reason",
        "geo",
        "id",
        "ip",
        "machine_id",
        "performer",
        "session_id",
        "ts",
    )
    kind: ClassVar[str] = "session"

    def __init__(
        self,
        *,
        id: str,
        ts: int,
        action: str,
        session_id: str,
        app: str = "app",
        performer: Performer | None = None,
        device: Device | None = None,
        geo: Geo | None = None,
        ip: str = "",
        machine_id: str | None = None,
        end_reason: str | None = None,
    ) -> None:
        if action not in ("session_start", "session_seen", "session_end"):
            raise ValueError(f"not a session change: {action!r}")
        if action == "session_end" and end_reason not in END_REASONS:
            raise ValueError(f"end_reason must be one of {sorted(END_REASONS)}")
        self.id = id
        self.ts = ts
        self.action = action
        self.session_id = session_id
        self.app = app
        self.performer = performer
        self.device = device
        self.geo = geo
        self.ip = ip
        self.machine_id = machine_id
        self.end_reason = end_reason

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionEvent):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SessionEvent({self.action} {self.session_id[:12]}…)"

    def to_dict(self) -> dict[str, Any]:
        device = self.device
        return {
            "_id": self.id,
            "kind": "session",
            "timestamp": iso_from_us(self.ts),
            "action": self.action,
            "session_id": self.session_id,
            "app": self.app,
            "user_agent": device.user_agent if device is not None else "",
            "device_info": device.to_dict() if device is not None else None,
            "geo": self.geo.to_dict(self.ip) if self.geo is not None else None,
            "ip": self.ip,
            "machine_identifier": self.machine_id,
            "performer": self.performer.to_dict() if self.performer else None,
            "end_reason": self.end_reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionEvent:
        info = data.get("device_info")
        geo = data.get("geo")
        perf = data.get("performer")
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            action=data["action"],
            session_id=data["session_id"],
            app=data.get("app", "app"),
            performer=Performer.from_dict(perf) if perf else None,
            device=Device.from_dict(data.get("user_agent") or "", info) if info else None,
            geo=Geo.from_dict(geo) if geo else None,
            ip=data.get("ip", ""),
            machine_id=data.get("machine_identifier"),
            end_reason=data.get("end_reason"),
        )


@dataclass(slots=True)
class SessionRecord:
    """One user session as stored: the SESSION tab's row.

    ``to_dict()`` is the session record of DESIGN.md field for field (``_id``,
    ``browser``, ``os``, ``device``, ``bot``, ``ip``, ``geoLocationInfoOfIp``,
    ``machine_identifier``, ``performer``, ``session_start``), plus
    ``last_seen``, ``ended_at``, ``end_reason``, ``active`` and ``app``.
    """

    id: str
    app: str
    session_start: int
    last_seen: int
    ip: str = ""
    machine_id: str | None = None
    performer: Performer | None = None
    device: Device | None = None
    geo: Geo | None = None
    ended_at: int | None = None
    end_reason: str | None = None

    kind: ClassVar[str] = "session"

    @property
    def ts(self) -> int:  # sessions list newest first by their start
        return self.session_start

    @property
    def active(self) -> bool:
        return self.ended_at is None

    @property
    def performer_id(self) -> str | None:
        return None if self.performer is None else self.performer.id

    def apply(self, change: SessionEvent) -> None:
        """Fold one change in (the same rules as the SQL upsert)."""
        self.session_start = min(self.session_start, change.ts)
        self.last_seen = max(self.last_seen, change.ts)
        if change.action == "session_start":
            self.ip = self.ip or change.ip
            self.machine_id = self.machine_id or change.machine_id
            self.performer = self.performer or change.performer
            self.device = self.device or change.device
            self.geo = self.geo or change.geo
        if change.action == "session_end" and self.ended_at is None:
            self.ended_at = change.ts
            self.end_reason = change.end_reason

    @classmethod
    def started_by(cls, change: SessionEvent) -> SessionRecord:
        record = cls(id=change.session_id, app=change.app, session_start=change.ts,
                     last_seen=change.ts)  # fmt: skip
        record.apply(change)
        return record

    def to_dict(self) -> dict[str, Any]:
        device = self.device
        out: dict[str, Any] = {"_id": self.id}
        if device is not None:
            out.update(device.to_dict())
        else:
            out.update({"browser": None, "os": None, "device": None, "bot": None})
        out["ip"] = self.ip
        out["geoLocationInfoOfIp"] = self.geo.to_dict(self.ip) if self.geo else None
        out["machine_identifier"] = self.machine_id
        out["performer"] = self.performer.to_dict() if self.performer else None
        out["session_start"] = iso_ms_from_us(self.session_start)
        out["last_seen"] = iso_ms_from_us(self.last_seen)
        out["ended_at"] = None if self.ended_at is None else iso_ms_from_us(self.ended_at)
        out["end_reason"] = self.end_reason
        out["active"] = self.active
        out["app"] = self.app
        out["user_agent"] = device.user_agent if device is not None else ""
        return out


class AuditEvent(Event):
    """Who changed what: one change of one entity, a link of a tamper-evident chain.

    ``chain``/``seq``/``prev_hash``/``hash`` are set by the recorder thread of
    the process that writes it (``audit/chain.py``): each process writes its own
    chain, numbered from 1, each row keyed-hashing the previous row's hash and
    its own canonical content.
    """

    __slots__ = (
        "action",
        "actor",
        "after",
        "app",
        "before",
        "chain",
        "client_ip",
        "diff",
        "entity_id",
        "entity_type",
        "hash",
        "id",
        "prev_hash",
        "reason",
        "request_id",
        "seq",
        "session_id",
        "ts",
    )
    kind: ClassVar[str] = "audit"

    def __init__(
        self,
        *,
        id: str,
        ts: int,
        action: str,
        entity_type: str,
        entity_id: str,
        actor: Performer | None = None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        diff: Mapping[str, Any] | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        client_ip: str | None = None,
        app: str = "app",
        chain: str = "",
        seq: int = 0,
        prev_hash: str = "",
        hash: str = "",
        session_id: str | None = None,
    ) -> None:
        self.id = id
        self.ts = ts
        self.action = action
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.actor = actor
        self.before = None if before is None else dict(before)
        self.after = None if after is None else dict(after)
        self.diff = {} if diff is None else dict(diff)
        self.reason = reason
        self.request_id = request_id
        self.client_ip = client_ip
        self.app = app
        self.chain = chain
        self.seq = seq
        self.prev_hash = prev_hash
        self.hash = hash
        #: The public id of the session the change was made in (a keyed hash, as
        #: on access events), None outside a signed-in request.
        self.session_id = session_id

    @property
    def priority(self) -> bool:
        return True  # an audit row is never dropped for lack of memory: a gap breaks the chain

    @property
    def actor_id(self) -> str | None:
        return None if self.actor is None else self.actor.id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuditEvent):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AuditEvent({self.action} {self.entity_type}:{self.entity_id} #{self.seq})"

    def content(self) -> dict[str, Any]:
        """What the chain hash covers: everything but the hash itself.

        ``session_id`` only when set: rows written before it was recorded
        (and rows made outside a session) hash as they always did.
        """
        content: dict[str, Any] = {
            "id": self.id,
            "ts": self.ts,
            "app": self.app,
            "chain": self.chain,
            "seq": self.seq,
            "action": self.action,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "actor": None if self.actor is None else self.actor.to_dict(),
            "before": self.before,
            "after": self.after,
            "diff": self.diff,
            "reason": self.reason,
            "request_id": self.request_id,
            "client_ip": self.client_ip,
            "prev_hash": self.prev_hash,
        }
        if self.session_id is not None:
            content["session_id"] = self.session_id
        return content

    def to_dict(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "kind": "audit",
            "timestamp": iso_from_us(self.ts),
            "action": self.action,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "actor": None if self.actor is None else self.actor.to_dict(),
            "performer": None if self.actor is None else self.actor.to_dict(),
            "before": self.before,
            "after": self.after,
            "diff": self.diff,
            "reason": self.reason,
            "request_id": self.request_id,
            "session_id": self.session_id,
            "ip": self.client_ip,
            "app": self.app,
            "chain": self.chain,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        actor = data.get("actor")
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            action=data["action"],
            entity_type=data["entity_type"],
            entity_id=data["entity_id"],
            actor=Performer.from_dict(actor) if actor else None,
            before=data.get("before"),
            after=data.get("after"),
            diff=data.get("diff"),
            reason=data.get("reason"),
            request_id=data.get("request_id"),
            client_ip=data.get("ip"),
            app=data.get("app", "app"),
            chain=data.get("chain", ""),
            seq=int(data.get("seq") or 0),
            prev_hash=data.get("prev_hash", ""),
            hash=data.get("hash", ""),
            session_id=data.get("session_id"),
        )


class _SlotEvent(Event):
    """An event whose fields are its ``__slots__``, compared field by field."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        names: tuple[str, ...] = type(self).__slots__
        return all(getattr(self, n) == getattr(other, n) for n in names)

    __hash__ = None  # type: ignore[assignment]


#: ``logging`` level numbers to the action a LOG row is filtered by.
LOG_ACTIONS = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}


def log_action(level: int) -> str:
    """The action of a log record: its level name, lower case (custom levels round down)."""
    for number in (50, 40, 30, 20, 10):
        if level >= number:
            return LOG_ACTIONS[number]
    return "debug"


class LogEvent(_SlotEvent):
    """One record of the app's own ``logging``, tagged with the request it was written in."""

    __slots__ = (
        "action",
        "app",
        "exception",
        "id",
        "level",
        "logger",
        "message",
        "origin",
        "performer_id",
        "request_id",
        "route",
        "ts",
    )
    kind: ClassVar[str] = "log"

    def __init__(
        self,
        *,
        id: str,
        ts: int,
        level: int,
        logger: str,
        message: str,
        exception: str | None = None,
        request_id: str | None = None,
        performer_id: str | None = None,
        route: str | None = None,
        origin: str = "",
        app: str = "app",
    ) -> None:
        self.id = id
        self.ts = ts
        self.level = level
        self.action = log_action(level)
        self.logger = logger
        self.message = message
        self.exception = exception
        self.request_id = request_id
        self.performer_id = performer_id
        self.route = route
        self.origin = origin  # "module.py:42 in func"
        self.app = app

    @property
    def priority(self) -> bool:
        return False  # a flood of log records must never grow the spill file

    def __repr__(self) -> str:
        return f"LogEvent({self.action} {self.logger}: {self.message[:40]!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "kind": "log",
            "timestamp": iso_from_us(self.ts),
            "action": self.action,
            "level": self.level,
            "logger": self.logger,
            "message": self.message,
            "exception": self.exception,
            "request_id": self.request_id,
            "performer_id": self.performer_id,
            "route": self.route,
            "origin": self.origin,
            "app": self.app,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogEvent:
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            level=int(data["level"]),
            logger=data.get("logger", ""),
            message=data.get("message", ""),
            exception=data.get("exception"),
            request_id=data.get("request_id"),
            performer_id=data.get("performer_id"),
            route=data.get("route"),
            origin=data.get("origin", ""),
            app=data.get("app", "app"),
        )


#: Advisory severities, least to most urgent.
SEVERITIES = ("info", "low", "medium", "high", "critical")


class AdvisoryEvent(_SlotEvent):
    """A finding of an advisory rule: what happened, to whom, and the evidence.

    ``action`` is the rule's name (``new_machine``, ``impossible_travel``, …);
    ``evidence`` holds the ids of the events it was drawn from.
    """

    __slots__ = (
        "action",
        "app",
        "details",
        "evidence",
        "id",
        "ip",
        "message",
        "performer_id",
        "request_id",
        "session_id",
        "severity",
        "ts",
    )
    kind: ClassVar[str] = "advisory"

    def __init__(
        self,
        *,
        id: str,
        ts: int,
        rule: str,
        severity: str,
        message: str,
        evidence: Sequence[str] = (),
        performer_id: str | None = None,
        ip: str | None = None,
        details: Mapping[str, Any] | None = None,
        app: str = "app",
        request_id: str | None = None,
        session_id: str | None = None,
    ) -> None:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        self.id = id
        self.ts = ts
        self.action = rule
        self.severity = severity
        self.message = message
        self.evidence = tuple(evidence)
        self.performer_id = performer_id
        self.ip = ip
        self.details = {} if details is None else dict(details)
        self.app = app
        # The request and session of the event that raised it (None when that
        # was not a request, e.g. a service check).
        self.request_id = request_id
        self.session_id = session_id

    @property
    def rule(self) -> str:
        return self.action

    @property
    def priority(self) -> bool:
        return True  # findings are few and are what an operator acts on

    def __repr__(self) -> str:
        return f"AdvisoryEvent({self.action} {self.severity}: {self.message[:40]!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "kind": "advisory",
            "timestamp": iso_from_us(self.ts),
            "action": self.action,
            "rule": self.action,
            "severity": self.severity,
            "message": self.message,
            "evidence": list(self.evidence),
            "performer_id": self.performer_id,
            "ip": self.ip,
            "details": self.details,
            "request_id": self.request_id,
            "session_id": self.session_id,
            "app": self.app,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdvisoryEvent:
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            rule=data.get("rule") or data["action"],
            severity=data.get("severity", "info"),
            message=data.get("message", ""),
            evidence=data.get("evidence") or (),
            performer_id=data.get("performer_id"),
            ip=data.get("ip"),
            details=data.get("details"),
            app=data.get("app", "app"),
            request_id=data.get("request_id"),
            session_id=data.get("session_id"),
        )


#: Availability states: ``unknown`` until a check has held a result ``retries`` times.
CHECK_STATES = ("unknown", "up", "down")


class CheckEvent(_SlotEvent):
    """One probe of an availability check and the check's state after it.

    ``action`` is ``"probe"``, or ``"state_change"`` when this probe moved the
    state (``previous`` → ``state``); uptime is computed over the states.
    """

    __slots__ = (
        "action",
        "app",
        "check",
        "error",
        "id",
        "latency_ms",
        "ok",
        "previous",
        "state",
        "ts",
    )
    kind: ClassVar[str] = "check"

    def __init__(
        self,
        *,
        id: str,
        ts: int,
        check: str,
        ok: bool,
        state: str,
        previous: str,
        latency_ms: float | None = None,
        error: str | None = None,
        app: str = "app",
    ) -> None:
        if state not in CHECK_STATES or previous not in CHECK_STATES:
            raise ValueError(f"check states are {', '.join(CHECK_STATES)}")
        self.id = id
        self.ts = ts
        self.check = check
        self.ok = bool(ok)
        self.state = state
        self.previous = previous
        self.action = "state_change" if state != previous else "probe"
        self.latency_ms = latency_ms
        self.error = error
        self.app = app

    @property
    def priority(self) -> bool:
        return self.action == "state_change"

    @property
    def performer_id(self) -> str:
        """A check's subject is the check: the ``performer`` filter of queries
        selects one check's probes by its name."""
        return self.check

    def __repr__(self) -> str:
        return f"CheckEvent({self.check} {self.previous}->{self.state} ok={self.ok})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "kind": "check",
            "timestamp": iso_from_us(self.ts),
            "action": self.action,
            "check": self.check,
            "ok": self.ok,
            "state": self.state,
            "previous": self.previous,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "app": self.app,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckEvent:
        return cls(
            id=data["_id"],
            ts=us_from_iso(data["timestamp"]),
            check=data["check"],
            ok=bool(data["ok"]),
            state=data["state"],
            previous=data.get("previous", "unknown"),
            latency_ms=data.get("latency_ms"),
            error=data.get("error"),
            app=data.get("app", "app"),
        )


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
