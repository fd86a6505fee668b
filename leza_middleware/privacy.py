"""Privacy controls: recorded headers, IP anonymisation, retention, erasure.

* **Headers** (``record_headers``): an opt-in allow-list of request headers
  stored with each access event. Names that can carry credentials are refused
  when the settings are read (:func:`parse_record_headers`), so no
  configuration can store them.
* **IP anonymisation** (``anonymize_ip``): ``none``, ``truncate`` (IPv4 /24,
  IPv6 /48) or ``hash`` (a keyed HMAC, ``h:`` + 16 hex digits), one mode for
  every kind or one per kind. Applied on the recorder thread before anything
  is stored or spilled, after the IP was geolocated.
* **Retention** (``retention``): per kind, old rows are purged in batches by
  the recorder's periodic tick (:class:`Privacy.tick`), a slice at a time so
  writing never stalls; audit rows go through the chain-preserving purge.
* **Erasure** (:meth:`Privacy.forget`): one person's events deleted, their
  sessions ended and scrubbed, their performer rows deleted, and their audit
  rows *redacted* under signed redaction entries so the chain still verifies
  (``docs/privacy.md``, "How erasure keeps the audit chain verifiable").
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from .audit.chain import canonical, row_hash
from .enrich.text import clean
from .errors import LezaConfigError, LezaError
from .events import (
    AccessEvent,
    AdvisoryEvent,
    AuditEvent,
    Event,
    Geo,
    LogEvent,
    SessionEvent,
    SessionRecord,
)
from .performer import Performer
from .redact import DENIED_HEADER_PARTS, DENIED_HEADERS, Redactor, header_refused
from .storage.capabilities import Capability, require, require_for_setting

if TYPE_CHECKING:
    from .leza import Leza
    from .storage.base import Storage

__all__ = [
    "DEFAULT_RETENTION",
    "DENIED_HEADERS",
    "DENIED_HEADER_PARTS",
    "FORGOTTEN",
    "IP_KINDS",
    "IP_MODES",
    "RETENTION_KINDS",
    "ForgetReport",
    "IpAnonymizer",
    "Privacy",
    "check_retention",
    "compile_identifiers",
    "effective_retention",
    "forget_event",
    "identifiers_of",
    "parse_anonymize_ip",
    "parse_duration",
    "parse_record_headers",
    "parse_retention",
    "plan_redactions",
    "private_geo",
    "redact_audit_event",
    "redaction_is_valid",
    "scrub_json",
    "scrub_session",
    "scrub_text",
    "sign_redaction",
    "stored_headers",
]

log = logging.getLogger("leza_middleware")

# --------------------------------------------------------------------------- headers

MAX_HEADERS = 16
MAX_HEADER_VALUE = 512
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")


def parse_record_headers(label: str, value: Any) -> tuple[str, ...]:
    """``record_headers``: lower-case header names, none of them secret-bearing."""
    if value is None or value is False:
        return ()
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, Iterable):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise LezaConfigError(f"{label} must hold header names, got {item!r}")
            items.append(item.strip())
    else:
        raise LezaConfigError(f"{label} must be a list of header names or a comma-separated string")
    names: list[str] = []
    for item in filter(None, items):
        name = item.lower()
        if not _HEADER_NAME.fullmatch(name):
            raise LezaConfigError(f"{label}: {item!r} is not a header name")
        if header_refused(name):
            raise LezaConfigError(
                f"{label}: the {item!r} header can carry credentials and is never stored "
                f"(refused: {', '.join(sorted(DENIED_HEADERS))}, any name containing "
                f"{', '.join(DENIED_HEADER_PARTS)}, and any secret name); see docs/privacy.md"
            )
        if name not in names:
            names.append(name)
    if len(names) > MAX_HEADERS:
        raise LezaConfigError(f"{label}: at most {MAX_HEADERS} headers, got {len(names)}")
    return tuple(names)


def stored_headers(raw: tuple[Any, ...], redactor: Redactor) -> str | None:
    """The JSON text stored for a captured header tuple ``(name, value, name, value, …)``.

    Values are cleaned and capped; secrets in them are filtered like the
    endpoint's (a ``Referer``'s query, a URL's userinfo, ``key=value`` text).
    Repeated names are joined with ``", "`` (RFC 9110).
    """
    out: dict[str, str] = {}
    for i in range(0, len(raw) - 1, 2):
        name, value = raw[i], raw[i + 1]
        if value is None:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        # Cleaned first so that what is matched is what is stored; capped again
        # after, as "[Filtered]" can be longer than what it replaces.
        text = clean(redactor.redact_header(clean(text, MAX_HEADER_VALUE)), MAX_HEADER_VALUE)
        key = str(name)
        out[key] = f"{out[key]}, {text}"[:MAX_HEADER_VALUE] if key in out else text
        if len(out) >= MAX_HEADERS:
            break
    return json.dumps(out, ensure_ascii=False) if out else None


# --------------------------------------------------------------------------- IPs

IP_MODES = ("none", "truncate", "hash")
#: Kinds ``anonymize_ip`` may name (log rows have no IP field: accepted, no effect).
IP_KINDS = ("access", "session", "audit", "advisory", "log")
_MEMO = 4096


def _pairs(label: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, val = part.partition("=")
        if not sep:
            raise LezaConfigError(f"{label}: {part!r} must look like kind=value")
        out[kind.strip().lower()] = val.strip()
    return out


def _by_kind(label: str, value: Any, kinds: tuple[str, ...], expected: str) -> dict[str, Any]:
    """A ``{kind: value}`` setting (or its ``"kind=value,..."`` text), kinds checked."""
    if isinstance(value, str):
        mapping: dict[str, Any] = _pairs(label, value)
    elif isinstance(value, Mapping):
        mapping = dict(value)
    else:
        raise LezaConfigError(f"{label} must {expected}, got {value!r}")
    for kind in mapping:
        if kind not in kinds:
            raise LezaConfigError(f"{label}: unknown kind {kind!r}; kinds: {', '.join(kinds)}")
    return mapping


def parse_anonymize_ip(label: str, value: Any) -> tuple[tuple[str, str], ...]:
    """``anonymize_ip``: one mode, or ``{kind: mode}``; the (kind, mode) pairs not ``none``."""
    if value is None or value is False:
        return ()
    if isinstance(value, str) and "=" not in value:
        mapping = dict.fromkeys(IP_KINDS, value.strip())  # one mode for every kind
    else:
        expected = f"be one of {', '.join(IP_MODES)} or a mapping kind -> mode"
        mapping = _by_kind(label, value, IP_KINDS, expected)
    out: dict[str, str] = {}
    for kind, mode in mapping.items():
        word = "none" if mode in (None, False, "") else str(mode).strip().lower()
        if word not in IP_MODES:
            raise LezaConfigError(
                f"{label}: mode for {kind} must be one of {', '.join(IP_MODES)}, got {mode!r}"
            )
        if word != "none":
            out[kind] = word
    return tuple(sorted(out.items()))


class IpAnonymizer:
    """One mode's transform of an IP text, memoised per distinct value.

    ``truncate`` zeroes the host part (IPv4 /24, IPv6 /48; a zone id is
    dropped); a value that is not an IP cannot be truncated and is hashed
    instead, unless it holds no digit ("unknown"). ``hash`` is
    ``h:`` + 16 hex digits of HMAC-SHA256 under a key derived from
    ``secret_key``: stable per IP across processes sharing the key, not
    reversible without it. Both are idempotent (a hashed value stays as it is),
    so applying a kind's mode on top of an already anonymised IP is safe.
    """

    __slots__ = ("_key", "_memo", "mode")

    def __init__(self, mode: str, key: bytes) -> None:
        if mode not in ("truncate", "hash"):
            raise ValueError(f"not an anonymisation mode: {mode!r}")
        self.mode = mode
        self._key = key
        self._memo: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        if not value:
            return value
        got = self._memo.get(value)
        if got is None:
            got = self._truncate(value) if self.mode == "truncate" else self._hash(value)
            if len(self._memo) >= _MEMO:
                self._memo.clear()
            if len(value) <= 256:
                self._memo[value] = got
        return got

    def _hash(self, value: str) -> str:
        if value.startswith("h:"):
            return value
        ip = _parse_ip(value)
        text = value if ip is None else str(ip)
        digest = hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return "h:" + digest.hexdigest()[:16]

    def _truncate(self, value: str) -> str:
        ip = _parse_ip(value)
        if ip is None:
            if value.startswith("h:") or not any(c.isdigit() for c in value):
                return value
            return self._hash(value)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        prefix = 24 if ip.version == 4 else 48
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.partition("%")[0])
    except ValueError:
        return None


def private_geo(geo: Geo) -> Geo:
    """``geo`` keyed by its location, not by the database network.

    The network (``81.2.69.128/26``, sometimes a /31) is finer than /24 and
    would give away what anonymisation removed; the location fields stay.
    """
    where = json.dumps(
        [geo.country_code, geo.region_code, geo.city, geo.zip_code, geo.latitude, geo.longitude],
        ensure_ascii=False,
    )
    key = "g:" + hashlib.blake2b(where.encode("utf-8"), digest_size=8).hexdigest()
    return replace(geo, key=key)


def _replace_in(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _replace_in(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_in(v, old, new) for v in value]
    return value


# --------------------------------------------------------------------------- retention

RETENTION_KINDS = ("access", "session", "audit", "log", "advisory", "check", "traffic")
#: Retention applied unless the setting names the kind: traffic rollups (kept
#: by SQL and memory storage) outlive the raw events' retention by default.
#: ``{"traffic": "off"}`` keeps them forever.
DEFAULT_RETENTION: dict[str, int] = {"traffic": 400 * 86_400}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)


def parse_duration(label: str, value: Any) -> float:
    """Seconds from ``90d``, ``12h``, ``30m``, ``2w``, ``45s`` or a number of seconds."""
    if isinstance(value, bool):
        raise LezaConfigError(f"{label} must be a duration such as 90d, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.fullmatch(str(value))
        if m is None:
            raise LezaConfigError(
                f"{label}: invalid duration {value!r}; use a number and a unit "
                "(90d, 12h, 30m, 2w, 45s) or seconds"
            )
        seconds = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    if not 0 < seconds < float("inf"):
        raise LezaConfigError(f"{label}: a duration must be more than 0, got {value!r}")
    return seconds


def parse_retention(label: str, value: Any) -> tuple[tuple[str, int], ...]:
    """``retention``: ``{kind: duration}`` (or ``"access=90d,log=30d"``) as sorted pairs."""
    if value is None or value is False or value == "":
        return ()
    expected = "map event kinds to durations, e.g. {'access': '90d'}"
    mapping = _by_kind(label, value, RETENTION_KINDS, expected)
    out: dict[str, int] = {}
    for kind, duration in mapping.items():
        if duration in (None, "", "off", False):
            if kind in DEFAULT_RETENTION:
                out[kind] = 0  # kept forever, instead of the default
            continue
        out[kind] = max(1, int(parse_duration(f"{label}[{kind!r}]", duration)))
    return tuple(sorted(out.items()))


def effective_retention(setting: Sequence[tuple[str, int]], keeps_rollups: bool) -> dict[str, int]:
    """Seconds per kind to purge: the setting over :data:`DEFAULT_RETENTION`,
    without kinds kept forever (0) and without ``traffic`` for a storage that
    keeps no rollups."""
    out = {**DEFAULT_RETENTION, **dict(setting)}
    if not keeps_rollups:
        out.pop("traffic", None)
    return {kind: keep for kind, keep in out.items() if keep > 0}


def check_retention(setting: Sequence[tuple[str, int]], storage: Storage) -> None:
    """At ``Leza(...)``: a retention the app configured needs a storage that can
    purge that kind (LezaConfigError naming ``retention[kind]`` otherwise). The
    default traffic retention is dropped instead for a backend without it, and
    so is any ``traffic`` retention for one that keeps no rollups (nothing to
    purge there)."""
    for kind, keep in setting:
        label = f"retention[{kind!r}]"
        if keep <= 0:
            continue
        if kind == "audit":
            require_for_setting(storage, Capability.AUDIT_CHAIN, label)
            require_for_setting(storage, Capability.AUDIT_PURGE, label)
        elif kind != "traffic" or storage.supports(Capability.ROLLUPS):
            require_for_setting(storage, Capability.PURGE, label)


# Work per tick: batches this size, at most this share of the recorder's time.
_PURGE_BATCH = 1000
_PURGE_SLICE = 0.1  # seconds of purging before the recorder writes again
_PURGE_DUTY = 0.1  # of wall time


# --------------------------------------------------------------------------- erasure

#: What replaces a forgotten person's values.
FORGOTTEN = "[Forgotten]"
_MIN_SCRUB = 4  # shorter identifiers would match unrelated text
_REDACTION_DOMAIN = b"leza-audit-redaction-v1\0"
_REDACTION_SIGNED = ("id", "chain", "seq", "hash", "redacted_hash", "redacted_at")


@dataclass(frozen=True)
class ForgetReport:
    """What :meth:`Leza.forget` changed (counts of rows)."""

    access: int = 0  # access events deleted
    logs: int = 0  # log records deleted (the person's, and those of their requests)
    advisories: int = 0  # advisories about them deleted
    sessions: int = 0  # sessions scrubbed (ended first when active)
    revoked: int = 0  # of those, sessions that were active and were revoked
    performers: int = 0  # identity rows deleted
    scrubbed: int = 0  # other rows whose text mentioned them, scrubbed
    audit_redacted: int = 0  # audit rows redacted under a signed redaction entry
    audit_unverified: int = 0  # audit rows redacted that did not verify before (no entry)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def sign_redaction(key: bytes, entry: Mapping[str, Any]) -> str:
    body = canonical({name: entry[name] for name in _REDACTION_SIGNED})
    return hmac.new(key, _REDACTION_DOMAIN + body, hashlib.sha256).hexdigest()


def redaction_is_valid(key: bytes, entry: Mapping[str, Any]) -> bool:
    try:
        expected = sign_redaction(key, entry)
    except (KeyError, TypeError):
        return False
    return hmac.compare_digest(expected, str(entry.get("sig") or ""))


def _matcher(identifiers: Iterable[str]) -> re.Pattern[str] | None:
    idents = sorted({i for i in identifiers if len(i) >= _MIN_SCRUB}, key=len, reverse=True)
    if not idents:
        return None
    return re.compile("|".join(map(re.escape, idents)), re.IGNORECASE)


def scrub_text(text: str | None, rx: re.Pattern[str] | None) -> str | None:
    if text is None or rx is None:
        return text
    return rx.sub(FORGOTTEN, text)


def scrub_json(value: Any, rx: re.Pattern[str] | None) -> Any:
    """Every string (keys too) in a JSON-like value, scrubbed."""
    if rx is None:
        return value
    if isinstance(value, str):
        return rx.sub(FORGOTTEN, value)
    if isinstance(value, Mapping):
        return {rx.sub(FORGOTTEN, str(k)): scrub_json(v, rx) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_json(v, rx) for v in value]
    return value


def redact_audit_event(
    e: AuditEvent, performer_id: str, rx: re.Pattern[str] | None, pseudonym: str
) -> AuditEvent | None:
    """The row with the person's data replaced, or None when it holds none.

    Their actor record becomes ``{"id": pseudonym, "name": "[Forgotten]"}``
    (one random pseudonym per erasure: their changes still read as one
    person's, nobody's in particular) and the row's client IP goes; any string
    mentioning them (before/after/diff values, reason, entity id) is scrubbed.
    ``chain``/``seq``/``prev_hash``/``hash`` are kept: the links stay intact.
    """
    actor = e.actor
    client_ip = e.client_ip
    if actor is not None and actor.id == performer_id:
        actor = Performer(id=pseudonym, name=FORGOTTEN)
        client_ip = None
    elif actor is not None and rx is not None and rx.search(actor.to_json()) is not None:
        # Someone else's identity that mentions them (an organisation name…).
        actor = Performer.from_dict(scrub_json(actor.to_dict(), rx))
    entity_id = FORGOTTEN if e.entity_id == performer_id else scrub_text(e.entity_id, rx)
    before = scrub_json(e.before, rx)
    after = scrub_json(e.after, rx)
    diff = scrub_json(e.diff, rx)
    reason = scrub_text(e.reason, rx)
    if (actor, client_ip, entity_id, before, after, diff, reason) == (
        e.actor, e.client_ip, e.entity_id, e.before, e.after, e.diff, e.reason
    ):  # fmt: skip
        return None
    return AuditEvent(
        id=e.id, ts=e.ts, action=e.action, entity_type=e.entity_type,
        entity_id=entity_id or "", actor=actor, before=before, after=after, diff=diff,
        reason=reason, request_id=e.request_id, client_ip=client_ip, app=e.app,
        chain=e.chain, seq=e.seq, prev_hash=e.prev_hash, hash=e.hash, session_id=e.session_id,
    )  # fmt: skip


def plan_redactions(
    rows: Iterable[AuditEvent],
    existing: Iterable[Mapping[str, Any]],
    performer_id: str,
    identifiers: Iterable[str],
    key: bytes,
    now: int,
) -> tuple[list[AuditEvent], list[dict[str, Any]], int]:
    """(redacted rows, their signed redaction entries, how many did not verify).

    An entry vouches for a redacted row: the row's chain hash (the HMAC of its
    original content, still the next row's ``prev_hash``) and the HMAC of its
    redacted content, signed with the audit key. Only a row that verifies now
    (as written, or as an earlier redaction vouched for it) gets one: signing
    a row that was already tampered with would launder the tampering. Such a
    row is still scrubbed, and still reported as edited.
    """
    rx = _matcher(identifiers)
    pseudonym = "forgotten:" + os.urandom(4).hex()
    vouched = {str(m["id"]): m for m in existing if redaction_is_valid(key, m)}
    out: list[AuditEvent] = []
    entries: list[dict[str, Any]] = []
    unverified = 0
    for e in rows:
        new = redact_audit_event(e, performer_id, rx, pseudonym)
        if new is None:
            continue
        current = row_hash(key, e)
        prior = vouched.get(e.id)
        intact = hmac.compare_digest(current, e.hash) or (
            prior is not None
            and str(prior["hash"]) == e.hash
            and hmac.compare_digest(str(prior["redacted_hash"]), current)
        )
        out.append(new)
        if not intact:
            unverified += 1
            continue
        entry: dict[str, Any] = {
            "id": e.id, "chain": e.chain, "seq": e.seq, "hash": e.hash,
            "redacted_hash": row_hash(key, new), "redacted_at": now,
        }  # fmt: skip
        entry["sig"] = sign_redaction(key, entry)
        entries.append(entry)
    return out, entries, unverified


def forget_event(
    e: Event, performer_id: str, rx: re.Pattern[str] | None, request_ids: set[str]
) -> Event | None:
    """One stored event after erasing ``performer_id`` (memory and JSON Lines backends).

    None: delete it. The same object: unchanged. Audit rows are left alone
    (they are redacted separately, under signed entries).
    """
    if isinstance(e, AccessEvent):
        if e.performer_id == performer_id:
            return None
        endpoint, reason = scrub_text(e.endpoint, rx), scrub_text(e.reason, rx)
        if endpoint == e.endpoint and reason == e.reason:
            return e
        row = list(e.row)
        row[4], row[9] = endpoint, reason
        return AccessEvent(tuple(row), e.device, e.geo, e.performer)
    if isinstance(e, LogEvent):
        if e.performer_id == performer_id or (e.request_id in request_ids):
            return None
        message, exception = scrub_text(e.message, rx), scrub_text(e.exception, rx)
        if message == e.message and exception == e.exception:
            return e
        return LogEvent(
            id=e.id, ts=e.ts, level=e.level, logger=e.logger, message=message or "",
            exception=exception, request_id=e.request_id, performer_id=e.performer_id,
            route=e.route, origin=e.origin, app=e.app,
        )  # fmt: skip
    if isinstance(e, AdvisoryEvent):
        if e.performer_id == performer_id:
            return None
        message, details = scrub_text(e.message, rx), scrub_json(e.details, rx)
        if message == e.message and details == e.details:
            return e
        return AdvisoryEvent(
            id=e.id, ts=e.ts, rule=e.rule, severity=e.severity, message=message or "",
            evidence=e.evidence, performer_id=e.performer_id, ip=e.ip, details=details,
            app=e.app, request_id=e.request_id, session_id=e.session_id,
        )  # fmt: skip
    if isinstance(e, SessionEvent) and e.performer is not None and e.performer.id == performer_id:
        return SessionEvent(
            id=e.id, ts=e.ts, action=e.action, session_id=e.session_id, app=e.app,
            end_reason=e.end_reason,
        )  # fmt: skip
    return e


def scrub_session(record: SessionRecord) -> SessionRecord:
    """A session record without who, where from, or on what device."""
    return replace(record, performer=None, ip="", machine_id=None, device=None, geo=None)


def identifiers_of(
    performer_id: str, performers: Iterable[Performer], extra: Iterable[str] = ()
) -> set[str]:
    """The strings erasure scrubs from free text: the id, emails, names, and ``extra``."""
    found = {performer_id, *(str(x) for x in extra)}
    for p in performers:
        found.update(v for v in (p.email, p.name) if v)
    return {x.strip() for x in found if len(x.strip()) >= _MIN_SCRUB}


# --------------------------------------------------------------------------- the facade


class Privacy:
    """``leza.privacy``: anonymisation on the recorder thread, retention, erasure."""

    def __init__(self, leza: Leza) -> None:
        self._leza = leza
        s = leza.settings
        key = leza.keyring.subkey(b"anonymize-ip")
        self.modes: dict[str, str] = dict(s.anonymize_ip)
        self.anonymizers: dict[str, IpAnonymizer] = {
            kind: IpAnonymizer(mode, key) for kind, mode in s.anonymize_ip
        }
        storage = leza.storage
        self.retention: dict[str, int] = effective_retention(
            s.retention,
            storage.supports(Capability.ROLLUPS) and storage.supports(Capability.PURGE),
        )
        self.retention_interval = s.retention_interval
        self._reset()

    def _reset(self) -> None:
        now = time.monotonic()
        # Workers started together spread their first purge (each purges:
        # deletes are idempotent, the later ones find little to do).
        delay = random.uniform(0, min(60.0, self.retention_interval))
        self._due: dict[str, float] = dict.fromkeys(self.retention, now + delay)
        self._running: dict[str, Iterator[int]] = {}
        self._next_slice = 0.0
        self._warned: set[str] = set()
        self.purged: dict[str, int] = dict.fromkeys(self.retention, 0)

    def after_fork(self) -> None:
        self._reset()  # a purge in flight belongs to the parent

    # -- recorder thread: anonymisation ----------------------------------------

    def access_anonymizer(self) -> IpAnonymizer | None:
        return self.anonymizers.get("access")

    def prepare_audit(self, event: AuditEvent) -> None:
        """Before an audit row is chained (its hash covers what is stored): secret
        values filtered at any depth, the IP anonymised."""
        if event.hash:  # chained already (replayed from a spill file): as it was
            return
        redactor = self._leza.redactor
        event.before = redactor.mask(event.before)
        event.after = redactor.mask(event.after)
        event.diff = redactor.mask_diff(event.diff)
        if event.reason:
            event.reason = redactor.scrub_text(event.reason)
        anon = self.anonymizers.get("audit")
        if anon is not None and event.client_ip:
            event.client_ip = anon(event.client_ip)

    def derived(self, events: Sequence[Event]) -> None:
        """Session and advisory events derived from (already anonymised) access
        events: their kind's mode on top."""
        sessions = self.anonymizers.get("session")
        advisories = self.anonymizers.get("advisory")
        for e in events:
            if sessions is not None and type(e) is SessionEvent and e.ip:
                e.ip = sessions(e.ip)
                if e.geo is not None and not e.geo.key.startswith("g:"):
                    e.geo = private_geo(e.geo)  # its network is finer than the IP now
            elif advisories is not None and type(e) is AdvisoryEvent and e.ip:
                new = advisories(e.ip)
                if new != e.ip:
                    # The rule wrote the address into its message and details too.
                    e.message = e.message.replace(e.ip, new)
                    e.details = _replace_in(e.details, e.ip, new)
                    e.ip = new

    # -- recorder thread: retention --------------------------------------------

    def tick(self) -> None:
        """Purge what is due, a slice at a time (the recorder writes in between)."""
        if not self.retention:
            return
        now = time.monotonic()
        if now < self._next_slice:
            return
        deadline = now + _PURGE_SLICE
        for kind, keep in self.retention.items():
            if time.monotonic() >= deadline:
                break
            batches = self._running.get(kind)
            if batches is None:
                if now < self._due[kind]:
                    continue
                batches = self._running[kind] = self._purge(kind, keep)
            finished = False
            try:
                while time.monotonic() < deadline:
                    self.purged[kind] += next(batches)
            except StopIteration:
                finished = True
            except Exception as exc:  # never let a purge break the recorder
                finished = True
                if kind not in self._warned:
                    self._warned.add(kind)
                    log.warning("leza: retention purge of %s failed: %s", kind, exc)
            if finished:  # else the slice is used up: carry on at the next tick
                self._running.pop(kind, None)
                self._due[kind] = time.monotonic() + self.retention_interval
        spent = time.monotonic() - now
        self._next_slice = time.monotonic() + spent * (1 - _PURGE_DUTY) / _PURGE_DUTY

    def _purge(self, kind: str, keep: int) -> Iterator[int]:
        before = time.time_ns() // 1000 - keep * 1_000_000
        leza = self._leza
        if kind == "audit":
            return leza.audit.purge_batches(before, _PURGE_BATCH)
        return leza.storage.purge_batches(kind, before, _PURGE_BATCH)

    def run_retention(self) -> dict[str, int]:
        """Purge every kind with a retention now, to the end (CLI, tests, cron)."""
        out: dict[str, int] = {}
        for kind, keep in self.retention.items():
            out[kind] = sum(self._purge(kind, keep))
        return out

    # -- erasure ---------------------------------------------------------------

    def forget(
        self, performer_id: str, *, identifiers: Iterable[str] = (), timeout: float = 10.0
    ) -> ForgetReport:
        """Erase what is recorded about one person (see :meth:`Leza.forget`)."""
        pid = str(performer_id).strip()
        if not pid:
            raise ValueError("forget() needs a performer id")
        leza = self._leza
        storage = leza.storage
        require(storage, Capability.ERASURE)  # before anything is flushed or revoked
        leza.flush(timeout)  # their queued events are stored first, then erased
        leza.query._ensure_ready()
        idents = identifiers_of(pid, storage.performer_identities(pid), identifiers)
        redacted: list[AuditEvent] = []
        entries: list[dict[str, Any]] = []
        unverified = 0
        # Planned before anything changes: a refusal leaves everything as it was.
        # Without an audit chain there is nothing to redact: audit rows it may
        # keep are not read back whole, so they stay as they are.
        if storage.supports(Capability.AUDIT_CHAIN):
            redacted, entries, unverified = plan_redactions(
                storage.iter_audit(), storage.audit_redactions(), pid, idents,
                leza.audit.key, time.time_ns() // 1000,
            )  # fmt: skip
            if redacted and leza.keyring.ephemeral:
                raise LezaError(
                    "erasing a person from the audit log needs the secret key the app writes "
                    "with (secret_key / LEZA_SECRET_KEY): the redaction entries are signed with it"
                )
        revoked = leza.sessions.revoke_all(pid)
        counts = storage.forget_performer(pid, sorted(idents))
        done = storage.redact_audit(redacted, entries) if redacted else 0
        return ForgetReport(
            access=counts.get("access", 0),
            logs=counts.get("logs", 0),
            advisories=counts.get("advisories", 0),
            sessions=counts.get("sessions", 0),
            revoked=revoked,
            performers=counts.get("performers", 0),
            scrubbed=counts.get("scrubbed", 0),
            audit_redacted=done - unverified if done else 0,
            audit_unverified=unverified,
        )


def compile_identifiers(identifiers: Iterable[str]) -> re.Pattern[str] | None:
    """The scrubbing pattern of erasure's identifiers (storage backends use it)."""
    return _matcher(identifiers)
