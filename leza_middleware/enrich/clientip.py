"""The client IP of a request, believing proxy headers only from trusted proxies.

Security model (DESIGN.md): by default nobody is trusted, so the client is the
socket peer and ``X-Forwarded-For`` / ``Forwarded`` are ignored entirely — a
client cannot spoof its address. When the peer is a configured trusted proxy,
the forwarding header is walked **right to left**: hops that are trusted
proxies are skipped (and kept as the chain), the first untrusted hop is the
client. Everything left of it was written by the client and is never read.

Choices worth knowing:

* ``Forwarded`` (RFC 7239) wins over ``X-Forwarded-For`` when it names at
  least one ``for=`` node. Your proxy must set or strip it (as it must
  ``X-Forwarded-For``), or a client can send its own.
* Ports, brackets, quotes and whitespace are stripped; IPv4-mapped IPv6
  (``::ffff:1.2.3.4``) becomes ``1.2.3.4``; an IPv6 zone id (``fe80::1%eth0``)
  is dropped — it names an interface of the proxy, not the client, and
  zone-scoped (link-local) addresses are never geolocated anyway.
* A hop that is not an IP (``unknown``, ``_hidden``, ``161.35.614.165``) in the
  client position is kept as received — control characters removed, capped at
  64 characters — with ``ip_valid=False``.
* A header from a trusted peer that cannot be parsed sets ``header_malformed``.
  Junk is only ever a problem where the walk reaches it: a well-formed right
  part (what your proxies appended) is still used, so garbage a client prepends
  cannot hide its address. With nothing usable the client is the peer. More
  than 64 hops: only the rightmost 64 are walked (``header_malformed``). When
  every readable hop is a trusted proxy but more (too many, or unparseable)
  precedes them, the client is the peer.
* An element of ``Forwarded`` without ``for=`` is an undisclosed hop
  (``unknown``): the walk stops there rather than believe what is left of it.

The common path (untrusted peer) is one dict lookup; parsing and trust checks
are cached in bounded dicts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import LezaConfigError
from .cache import bounded_put

__all__ = ["MAX_HOPS", "MAX_TOKEN", "ClientAddress", "ProxyTrust"]

MAX_HOPS = 64  # hops of one header walked at most
MAX_TOKEN = 64  # characters kept of a hop that is not an IP
_CACHE_SIZE = 4096
_CACHEABLE_HEADERS = 1024  # resolve() results are cached when the headers are this short

_SETTING = "trusted_proxies"


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """Who sent a request, as far as the trusted proxies tell."""

    client_ip: str  # normalised IP, or the offending token as received (sanitised) when invalid
    ip_valid: bool
    peer_ip: str  # the socket peer; "" when unknown
    chain: tuple[str, ...]  # trusted proxies between client and peer, in header order
    header_malformed: bool  # a forwarding header from a trusted peer could not be parsed


# -- tokens ---------------------------------------------------------------------------


def _sanitise(token: str) -> str:
    """A non-IP token made safe to store: printable characters only, capped."""
    if not (token.isascii() and token.isprintable()):
        token = "".join(ch for ch in token if ch.isprintable())
    return token.strip()[:MAX_TOKEN]


def _parse_ip(token: str) -> str | None:
    """The normalised IP a forwarding token names, or None when it is not an IP."""
    t = token.strip()
    if len(t) >= 2 and t[0] == '"' and t[-1] == '"':
        t = t[1:-1].strip()
    if not t or len(t) > 100:
        return None
    if t[0] == "[":  # "[2001:db8::1]" or "[2001:db8::1]:4711"
        end = t.find("]")
        if end < 0 or (end + 1 < len(t) and t[end + 1] != ":"):
            return None
        host = t[1:end]
    elif t.count(":") == 1:  # "1.2.3.4:8080"
        host = t.partition(":")[0]
    else:
        host = t
    if "%" in host:  # IPv6 zone id: dropped (see module docstring)
        host = host.partition("%")[0]
        if ":" not in host:
            return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return str(mapped)
    return str(addr)


# -- Forwarded (RFC 7239) ---------------------------------------------------------------

# forwarded-pair = token "=" value ; value = token / quoted-string (lenient: an
# unquoted value is anything up to the next ";" or ",", so unquoted IPv6 and
# obfuscated ports from sloppy proxies still parse). Written to match in
# linear time: no nested or adjacent quantifiers over the same characters.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(rf'({_TOKEN})[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^;,"\s][^;,"]*)', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_UNKNOWN = "unknown"


class _Malformed(Exception):
    pass


def _forwarded_elements(header: str) -> list[str | None]:
    """The ``for=`` value of every element, left to right (None: element without ``for``).

    Raises _Malformed on anything that is not RFC 7239 syntax.
    """
    out: list[str | None] = []
    current: str | None = None
    seen: set[str] = set()
    in_element = False
    pos = 0
    n = len(header)
    while pos < n:
        ch = header[pos]
        if ch in " \t;":
            pos += 1
            continue
        if ch == ",":
            if in_element:
                out.append(current)
            current, seen, in_element = None, set(), False
            pos += 1
            continue
        m = _PAIR.match(header, pos)
        if m is None:
            raise _Malformed
        key = m.group(1).lower()
        if key in seen:  # a parameter MUST NOT occur twice in one element
            raise _Malformed
        seen.add(key)
        if key == "for":
            value = m.group(2)
            if value.startswith('"'):
                value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
            else:
                value = value.rstrip()
            current = value
        in_element = True
        pos = m.end()
        while pos < n and header[pos] in " \t":
            pos += 1
        if pos < n and header[pos] not in ";,":
            raise _Malformed
    if in_element:
        out.append(current)
    return out


def _forwarded_hops(header: str) -> tuple[list[str] | None, bool, bool]:
    """(hops left to right or None when no element names a node, malformed, partial).

    ``partial``: the hops are only the well-formed right-hand part of the header;
    left of them is something that did not parse.
    """
    partial = False
    try:
        elements = _forwarded_elements(header)
        malformed = False
    except _Malformed:
        # Recover the well-formed right-hand elements (what the trusted proxies
        # appended; their for= values never hold a comma), stopping at the
        # first piece that does not parse: it and everything left of it are
        # the sender's and never reached by a sound walk anyway.
        malformed = True
        elements = []
        for piece in reversed(header.rsplit(",", MAX_HOPS)):
            try:
                parsed = _forwarded_elements(piece)
            except _Malformed:
                partial = True
                break
            if len(parsed) != 1:
                if parsed:  # pragma: no cover - a piece holds no comma
                    break
                continue
            elements.append(parsed[0])
        elements.reverse()
    if all(value is None for value in elements):
        return None, malformed or not elements, False
    return [_UNKNOWN if value is None else value for value in elements], malformed, partial


# -- trust ------------------------------------------------------------------------------

_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_Net = tuple[int, int]  # (network int, mask int)


def _refuse_all(entry: str) -> LezaConfigError:
    return LezaConfigError(
        f"{_SETTING} entry {entry!r} would trust every peer: any client could then spoof "
        "its IP with an X-Forwarded-For or Forwarded header. List your proxies' IP "
        "addresses or CIDR networks explicitly (e.g. '10.0.0.0/8, 2001:db8::/32')."
    )


def _parse_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = entry.strip()
    if text == "*" or text.lower() in {"all", "any", "everyone"}:
        raise _refuse_all(entry)
    if text.startswith("["):  # "[2001:db8::1]" or "[2001:db8::]/32"
        end = text.find("]")
        if end > 0:
            text = text[1:end] + text[end + 1 :]
    addr, slash, prefix = text.partition("/")
    if "%" in addr:
        addr = addr.partition("%")[0]
    try:
        net = ipaddress.ip_network(addr + slash + prefix, strict=False)
    except ValueError as exc:
        raise LezaConfigError(
            f"{_SETTING} entry {entry!r} is not an IP address or CIDR network ({exc})"
        ) from exc
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_V4_MAPPED):
        # Peers are compared in their IPv4 form, so trust the IPv4 network.
        base = int(net.network_address) & 0xFFFFFFFF
        net = ipaddress.IPv4Network((base, net.prefixlen - 96))
    if net.prefixlen == 0:
        raise _refuse_all(entry)
    return net


def _entries(trusted: Iterable[str] | str | None) -> list[str]:
    if trusted is None:
        return []
    if isinstance(trusted, str):
        return trusted.split(",")
    if isinstance(trusted, (bytes, bytearray)) or not isinstance(trusted, Iterable):
        raise LezaConfigError(
            f"{_SETTING} must be a list of IPs/CIDRs or a comma-separated string, "
            f"got {type(trusted).__name__}"
        )
    out: list[str] = []
    for item in trusted:
        if not isinstance(item, str):
            raise LezaConfigError(
                f"{_SETTING} entry {item!r} is a {type(item).__name__}, not a string "
                "(write IPs and CIDR networks as text, e.g. '10.0.0.0/8')"
            )
        out.extend(item.split(","))
    return out


class ProxyTrust:
    """Which peers may tell the client IP, and the resolution of it per request."""

    __slots__ = ("_norm", "_peer", "_resolved", "_trust", "_v4", "_v6", "networks")

    def __init__(self, trusted: Iterable[str] | str | None = ()) -> None:
        """``trusted``: IPs and CIDR networks, as an iterable or a comma-separated string.

        Raises :class:`LezaConfigError` naming the offending entry for ``*``,
        ``0.0.0.0/0``, ``::/0``, unparseable entries and non-string items.
        """
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in _entries(trusted):
            if entry.strip():
                net = _parse_network(entry)
                if net not in nets:
                    nets.append(net)
        #: The trusted networks, normalised (``("10.0.0.0/8", "2001:db8::/32")``).
        self.networks: tuple[str, ...] = tuple(str(net) for net in nets)
        self._v4: tuple[_Net, ...] = tuple(
            (int(n.network_address), int(n.netmask)) for n in nets if n.version == 4
        )
        self._v6: tuple[_Net, ...] = tuple(
            (int(n.network_address), int(n.netmask)) for n in nets if n.version == 6
        )
        self._trust: dict[str, bool] = {}  # normalised IP -> trusted
        self._norm: dict[str, str] = {}  # raw token -> normalised IP, "" when not an IP
        self._peer: dict[str | None, ClientAddress] = {}  # untrusted peer -> its result
        self._resolved: dict[tuple[str, str | None, str | None], ClientAddress] = {}

    def __repr__(self) -> str:
        return f"ProxyTrust({list(self.networks)!r})"

    # -- checks -----------------------------------------------------------------

    def _ip(self, token: str) -> str | None:
        ip = self._norm.get(token)
        if ip is None:
            ip = _parse_ip(token) or ""
            bounded_put(self._norm, token, ip, _CACHE_SIZE)
        return ip or None

    def _trusted_ip(self, ip: str) -> bool:
        """Whether a normalised IP is in a trusted network."""
        hit = self._trust.get(ip)
        if hit is not None:
            return hit
        addr = ipaddress.ip_address(ip)
        value = int(addr)
        nets = self._v4 if addr.version == 4 else self._v6
        trusted = any(value & mask == net for net, mask in nets)
        bounded_put(self._trust, ip, trusted, _CACHE_SIZE)
        return trusted

    def is_trusted(self, ip: str) -> bool:
        """Whether ``ip`` (any accepted form: port, brackets, mapped) is a trusted proxy."""
        if not isinstance(ip, str) or not (self._v4 or self._v6):
            return False
        norm = self._ip(ip)
        return norm is not None and self._trusted_ip(norm)

    # -- resolution -------------------------------------------------------------

    def resolve(
        self, peer: str | None, x_forwarded_for: str | None, forwarded: str | None
    ) -> ClientAddress:
        """The client of a request from ``peer`` with these (joined) header values.

        Never raises. Headers are read only when ``peer`` is a trusted proxy.
        """
        try:
            hit = self._peer.get(peer)  # the common path: an untrusted peer
            if hit is not None:
                return hit
            return self._resolve(peer, x_forwarded_for, forwarded)
        except Exception:  # pragma: no cover - defensive: never fail a request's record
            token = _sanitise(peer) if isinstance(peer, str) else ""
            return ClientAddress(token, False, token, (), True)

    def _resolve(self, peer: str | None, xff: str | None, fwd: str | None) -> ClientAddress:
        peer_ip = self._ip(peer) if isinstance(peer, str) and peer else None
        if peer_ip is None or not self._trusted_ip(peer_ip):
            if peer_ip is not None:
                result = ClientAddress(peer_ip, True, peer_ip, (), False)
            else:
                token = _sanitise(peer) if isinstance(peer, str) else ""
                result = ClientAddress(token, False, token, (), False)
            bounded_put(self._peer, peer, result, _CACHE_SIZE)
            return result

        if not isinstance(xff, str):
            xff = None
        if not isinstance(fwd, str):
            fwd = None
        key = (peer_ip, xff, fwd)
        cacheable = len(xff or "") + len(fwd or "") <= _CACHEABLE_HEADERS
        if cacheable:
            hit = self._resolved.get(key)
            if hit is not None:
                return hit
        result = self._walk(peer_ip, xff, fwd)
        if cacheable:
            bounded_put(self._resolved, key, result, _CACHE_SIZE)
        return result

    def _walk(self, peer_ip: str, xff: str | None, fwd: str | None) -> ClientAddress:
        hops: list[str] | None = None
        malformed = False
        # truncated: the hops are only the right-hand part of the header (too
        # many hops, or unparseable content left of them).
        truncated = False
        if fwd is not None:
            hops, malformed, truncated = _forwarded_hops(fwd)
        if hops is None and xff is not None:
            parts = xff.rsplit(",", MAX_HOPS)
            if len(parts) > MAX_HOPS:  # more entries than that: keep the rightmost
                del parts[0]
                truncated = True
            hops = [p for p in (part.strip() for part in parts) if p]
            if not hops:
                malformed = True
        if not hops:
            return ClientAddress(peer_ip, True, peer_ip, (), malformed)
        if len(hops) > MAX_HOPS:
            del hops[:-MAX_HOPS]
            truncated = True
        malformed = malformed or truncated

        chain: list[str] = []  # right to left while walking
        for raw in reversed(hops):
            ip = self._ip(raw)
            if ip is not None and self._trusted_ip(ip):
                chain.append(ip)
                continue
            chain.reverse()
            if ip is None:
                return ClientAddress(_sanitise(raw), False, peer_ip, tuple(chain), malformed)
            return ClientAddress(ip, True, peer_ip, tuple(chain), malformed)
        if truncated:  # every hop we could read is trusted, what precedes is not known
            return ClientAddress(peer_ip, True, peer_ip, (), True)
        # Every hop is a trusted proxy: the leftmost is the client.
        client = chain.pop()
        chain.reverse()
        return ClientAddress(client, True, peer_ip, tuple(chain), malformed)
