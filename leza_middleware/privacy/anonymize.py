"""``anonymize_ip``: IPs anonymised on the recorder thread, before anything is stored.

``none``, ``truncate`` (IPv4 /24, IPv6 /48) or ``hash`` (a keyed HMAC, ``h:``
+ 16 hex digits), one mode for every kind or one per kind. Applied after the
IP was geolocated, before anything is stored or spilled (:class:`IpPolicy`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..errors import LezaConfigError
from ..events import AdvisoryEvent, AuditEvent, Event, Geo, SessionEvent
from ..redact import Redactor
from .kinds import by_kind

__all__ = ["IP_KINDS", "IP_MODES", "IpAnonymizer", "IpPolicy", "parse_anonymize_ip", "private_geo"]

IP_MODES = ("none", "truncate", "hash")
#: Kinds ``anonymize_ip`` may name (log rows have no IP field: accepted, no effect).
IP_KINDS = ("access", "session", "audit", "advisory", "log")
_MEMO = 4096


def parse_anonymize_ip(label: str, value: Any) -> tuple[tuple[str, str], ...]:
    """``anonymize_ip``: one mode, or ``{kind: mode}``; the (kind, mode) pairs not ``none``."""
    if value is None or value is False:
        return ()
    if isinstance(value, str) and "=" not in value:
        mapping = dict.fromkeys(IP_KINDS, value.strip())  # one mode for every kind
    else:
        expected = f"be one of {', '.join(IP_MODES)} or a mapping kind -> mode"
        mapping = by_kind(label, value, IP_KINDS, expected)
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


class IpPolicy:
    """Each kind's anonymiser, and the audit rows' secrets filtered before they are chained.

    ``modes``: the ``anonymize_ip`` setting's (kind, mode) pairs; ``key``: the
    hash mode's HMAC key (derived from ``secret_key``).
    """

    def __init__(self, modes: Sequence[tuple[str, str]], key: bytes, redactor: Redactor) -> None:
        self.modes: dict[str, str] = dict(modes)
        self.anonymizers: dict[str, IpAnonymizer] = {
            kind: IpAnonymizer(mode, key) for kind, mode in modes
        }
        self._redactor = redactor

    def access_anonymizer(self) -> IpAnonymizer | None:
        return self.anonymizers.get("access")

    def prepare_audit(self, event: AuditEvent) -> None:
        """Before an audit row is chained (its hash covers what is stored): secret
        values filtered at any depth, the IP anonymised."""
        if event.hash:  # chained already (replayed from a spill file): as it was
            return
        redactor = self._redactor
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
