"""ProxyTrust: who the client is, believing proxy headers only from trusted proxies."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leza_middleware.enrich.clientip import MAX_HOPS, MAX_TOKEN, ClientAddress, ProxyTrust
from leza_middleware.errors import LezaConfigError

TRUSTED = ("10.0.0.0/8", "192.168.0.1", "2001:db8:ffff::/48")
PROXY = "10.0.0.1"  # a trusted peer


@pytest.fixture
def trust() -> ProxyTrust:
    return ProxyTrust(TRUSTED)


def _printable(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


# -- default: trust nobody ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xff", "fwd"),
    [
        ("1.2.3.4", None),
        (None, "for=1.2.3.4"),
        ("1.2.3.4, 5.6.7.8", 'for="[2001:db8::1]:80"'),
        ("", ""),
        ("garbage", 'for="unterminated'),
    ],
)
def test_no_trusted_proxies_ignores_headers(xff: str | None, fwd: str | None) -> None:
    addr = ProxyTrust().resolve("203.0.113.9", xff, fwd)
    assert addr == ClientAddress("203.0.113.9", True, "203.0.113.9", (), False)


def test_untrusted_peer_ignores_headers(trust: ProxyTrust) -> None:
    addr = trust.resolve("203.0.113.9", "1.2.3.4", "for=5.6.7.8")
    assert addr == ClientAddress("203.0.113.9", True, "203.0.113.9", (), False)


@pytest.mark.parametrize("peer", [None, ""])
def test_unknown_peer(trust: ProxyTrust, peer: str | None) -> None:
    assert trust.resolve(peer, "1.2.3.4", None) == ClientAddress("", False, "", (), False)


def test_invalid_peer_is_kept_as_received(trust: ProxyTrust) -> None:
    addr = trust.resolve("unix:/run/app.sock", "1.2.3.4", None)
    assert addr == ClientAddress("unix:/run/app.sock", False, "unix:/run/app.sock", (), False)


def test_peer_is_normalised() -> None:
    addr = ProxyTrust().resolve("::ffff:203.0.113.9", None, None)
    assert (addr.client_ip, addr.peer_ip, addr.ip_valid) == ("203.0.113.9", "203.0.113.9", True)


def test_untrusted_peer_result_is_cached() -> None:
    pt = ProxyTrust()
    assert pt.resolve("203.0.113.9", None, None) is pt.resolve("203.0.113.9", "1.1.1.1", None)


def test_caches_are_bounded() -> None:
    pt = ProxyTrust(["10.0.0.0/8"])
    for i in range(5000):
        pt.resolve(f"198.51.{i // 256}.{i % 256}", None, None)
        pt.resolve(PROXY, f"203.0.{i // 256}.{i % 256}", None)
    assert len(pt._peer) <= 4096
    assert len(pt._resolved) <= 4096
    assert len(pt._norm) <= 4096
    assert len(pt._trust) <= 4096


# -- the proxy-header table -----------------------------------------------------------------------

# (id, peer, X-Forwarded-For, Forwarded, client_ip, ip_valid, chain, header_malformed)
TABLE: list[tuple[str, str, str | None, str | None, str, bool, tuple[str, ...], bool]] = [
    ("no headers", PROXY, None, None, PROXY, True, (), False),
    ("xff rightmost untrusted", PROXY, "1.1.1.1, 2.2.2.2", None, "2.2.2.2", True, (), False),
    (
        "xff spoofed left ignored",
        PROXY,
        "6.6.6.6, 7.7.7.7, 2.2.2.2",
        None,
        "2.2.2.2",
        True,
        (),
        False,
    ),
    (
        "xff multi-proxy cidr chain",
        PROXY,
        "9.9.9.9, 203.0.113.7, 10.1.2.3, 10.0.0.2",
        None,
        "203.0.113.7",
        True,
        ("10.1.2.3", "10.0.0.2"),
        False,
    ),
    (
        "xff every hop trusted: leftmost",
        PROXY,
        "10.0.0.5, 192.168.0.1, 10.0.0.6",
        None,
        "10.0.0.5",
        True,
        ("192.168.0.1", "10.0.0.6"),
        False,
    ),
    ("xff no spaces", PROXY, "1.1.1.1,2.2.2.2", None, "2.2.2.2", True, (), False),
    ("xff empty entries skipped", PROXY, " , 2.2.2.2 ,, ", None, "2.2.2.2", True, (), False),
    ("xff ipv4 port", PROXY, "1.2.3.4:8080", None, "1.2.3.4", True, (), False),
    ("xff ipv6 brackets port", PROXY, "[2001:db8::5]:443", None, "2001:db8::5", True, (), False),
    ("xff ipv6 brackets", PROXY, "[2001:DB8:0::5]", None, "2001:db8::5", True, (), False),
    ("xff ipv6 bare", PROXY, "2001:0db8:0000::0005", None, "2001:db8::5", True, (), False),
    ("xff quoted", PROXY, '"1.2.3.4"', None, "1.2.3.4", True, (), False),
    ("xff ipv4-mapped", PROXY, "::ffff:1.2.3.4", None, "1.2.3.4", True, (), False),
    ("xff zone id dropped", PROXY, "fe80::1%eth0", None, "fe80::1", True, (), False),
    (
        "xff trusted ipv6 proxy in chain",
        PROXY,
        "1.2.3.4, [2001:db8:ffff::9]:80",
        None,
        "1.2.3.4",
        True,
        ("2001:db8:ffff::9",),
        False,
    ),
    ("xff ipv6 peer", "2001:db8:ffff::1", "1.2.3.4", None, "1.2.3.4", True, (), False),
    ("xff mapped peer", "::ffff:10.0.0.1", "1.2.3.4", None, "1.2.3.4", True, (), False),
    ("xff invalid as received", PROXY, "161.35.614.165", None, "161.35.614.165", False, (), False),
    (
        "xff invalid behind trusted hop",
        PROXY,
        "1.1.1.1, 161.35.614.165, 10.0.0.3",
        None,
        "161.35.614.165",
        False,
        ("10.0.0.3",),
        False,
    ),
    ("xff unknown", PROXY, "unknown", None, "unknown", False, (), False),
    ("xff leading zeros invalid", PROXY, "01.2.3.4", None, "01.2.3.4", False, (), False),
    ("xff empty", PROXY, "", None, PROXY, True, (), True),
    ("xff separators only", PROXY, " , ,, ", None, PROXY, True, (), True),
    ("fwd simple", PROXY, None, "for=192.0.2.43", "192.0.2.43", True, (), False),
    (
        "fwd quoted ipv6 port",
        PROXY,
        None,
        'for="[2001:db8:cafe::17]:4711"',
        "2001:db8:cafe::17",
        True,
        (),
        False,
    ),
    ("fwd quoted ipv4", PROXY, None, 'for="192.0.2.60";proto=http', "192.0.2.60", True, (), False),
    ("fwd unquoted ipv6 lenient", PROXY, None, "for=[2001:db8::1]", "2001:db8::1", True, (), False),
    (
        "fwd case and spaces",
        PROXY,
        None,
        'For = "192.0.2.1" ; Proto=https',
        "192.0.2.1",
        True,
        (),
        False,
    ),
    ("fwd quoted-pair", PROXY, None, r'for="192.0.2.\4"', "192.0.2.4", True, (), False),
    (
        "fwd elements and lines joined",
        PROXY,
        None,
        "for=192.0.2.43;proto=http, for=198.51.100.17;by=10.0.0.1,for=10.0.0.7",
        "198.51.100.17",
        True,
        ("10.0.0.7",),
        False,
    ),
    (
        "fwd precedence over xff",
        PROXY,
        "203.0.113.1",
        "for=198.51.100.17",
        "198.51.100.17",
        True,
        (),
        False,
    ),
    (
        "fwd without for: xff used",
        PROXY,
        "2.2.2.2",
        "proto=https;host=example.com",
        "2.2.2.2",
        True,
        (),
        False,
    ),
    ("fwd without for, no xff", PROXY, None, "proto=https", PROXY, True, (), False),
    (
        "fwd hop without for stops the walk",
        PROXY,
        None,
        "for=2.2.2.2, proto=https",
        "unknown",
        False,
        (),
        False,
    ),
    ("fwd unknown", PROXY, None, "for=unknown", "unknown", False, (), False),
    ("fwd obfuscated", PROXY, None, "for=_hidden", "_hidden", False, (), False),
    ("fwd obfuscated port", PROXY, None, 'for="_gazonk:_4711"', "_gazonk:_4711", False, (), False),
    ("fwd zone id", PROXY, None, 'for="[fe80::1%25eth0]:80"', "fe80::1", True, (), False),
    (
        "fwd invalid as received",
        PROXY,
        None,
        'for="161.35.614.165"',
        "161.35.614.165",
        False,
        (),
        False,
    ),
    ("fwd empty", PROXY, None, "", PROXY, True, (), True),
    ("fwd empty value", PROXY, None, "for=", PROXY, True, (), True),
    ("fwd no equals", PROXY, None, "garbage", PROXY, True, (), True),
    ("fwd lone quote", PROXY, None, '"', PROXY, True, (), True),
    ("fwd unterminated", PROXY, None, 'for="1.2.3.4', PROXY, True, (), True),
    ("fwd junk after quoted", PROXY, None, 'for="1.2.3.4"x', PROXY, True, (), True),
    ("fwd duplicate for", PROXY, None, "for=1.2.3.4;for=5.6.7.8", PROXY, True, (), True),
    ("fwd garbage, xff fallback", PROXY, "2.2.2.2", 'for="oops', "2.2.2.2", True, (), True),
    (
        "fwd garbage prepended by client cannot hide it",
        PROXY,
        None,
        'for="x, for=5.6.7.8',
        "5.6.7.8",
        True,
        (),
        True,
    ),
    (
        "fwd garbage left of trusted hops",
        PROXY,
        None,
        'for="x, for=5.6.7.8, for=10.0.0.9',
        "5.6.7.8",
        True,
        ("10.0.0.9",),
        True,
    ),
    (
        "fwd garbage reached in the walk",
        PROXY,
        None,
        'for=5.6.7.8, x"y, for=10.0.0.9',
        PROXY,
        True,
        (),
        True,
    ),
]


@pytest.mark.parametrize(
    ("peer", "xff", "fwd", "client", "valid", "chain", "malformed"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_proxy_header_table(
    trust: ProxyTrust,
    peer: str,
    xff: str | None,
    fwd: str | None,
    client: str,
    valid: bool,
    chain: tuple[str, ...],
    malformed: bool,
) -> None:
    addr = trust.resolve(peer, xff, fwd)
    peer_ip = "10.0.0.1" if peer == "::ffff:10.0.0.1" else peer
    assert addr == ClientAddress(client, valid, peer_ip, chain, malformed)
    assert trust.resolve(peer, xff, fwd) == addr  # cached answer is the same


def test_invalid_token_is_sanitised_and_capped(trust: ProxyTrust) -> None:
    addr = trust.resolve(PROXY, "1.1.1.1, evil\x1b[31m\r\nX-Admin: 1\u202e" + "z" * 200, None)
    assert not addr.ip_valid
    assert addr.client_ip.startswith("evil[31mX-Admin: 1")
    assert len(addr.client_ip) == MAX_TOKEN
    assert _printable(addr.client_ip)


def test_too_many_hops_walks_the_rightmost(trust: ProxyTrust) -> None:
    spoofed = ", ".join(["6.6.6.6"] * 200)
    addr = trust.resolve(PROXY, f"{spoofed}, 5.5.5.5, 10.0.0.2", None)
    assert addr == ClientAddress("5.5.5.5", True, PROXY, ("10.0.0.2",), True)
    fwd = ", ".join(["for=6.6.6.6"] * 200) + ", for=5.5.5.5"
    assert trust.resolve(PROXY, None, fwd) == ClientAddress("5.5.5.5", True, PROXY, (), True)


def test_too_many_trusted_hops_falls_back_to_peer(trust: ProxyTrust) -> None:
    hops = ", ".join(["10.0.0.9"] * (MAX_HOPS + 1))
    assert trust.resolve(PROXY, hops, None) == ClientAddress(PROXY, True, PROXY, (), True)


def test_exactly_max_hops_is_fine(trust: ProxyTrust) -> None:
    hops = ", ".join(["10.0.0.9"] * MAX_HOPS)
    addr = trust.resolve(PROXY, hops, None)
    assert (addr.client_ip, len(addr.chain), addr.header_malformed) == (
        "10.0.0.9",
        MAX_HOPS - 1,
        False,
    )


def test_pathological_headers_are_cheap(trust: ProxyTrust) -> None:
    # Inputs that make naive regular expressions backtrack quadratically.
    for fwd in (
        "for=a" + " " * 20000 + '"',
        'for="' + "\\" * 20000,
        "a" * 20000,
        "for=" + "1" * 20000 + "=",
        ";" * 20000,
        "," * 20000,
    ):
        addr = trust.resolve(PROXY, None, fwd)
        assert addr.peer_ip == PROXY
    assert trust.resolve(PROXY, "," * 20000 + "1.2.3.4", None).client_ip == "1.2.3.4"


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    ["*", "0.0.0.0/0", "::/0", "::ffff:0:0/96", "1.2.3.4/0", "[::]/0", "all"],
)
def test_trusting_everyone_is_refused(entry: str) -> None:
    with pytest.raises(LezaConfigError) as info:
        ProxyTrust([entry])
    message = str(info.value)
    assert repr(entry) in message
    assert "spoof" in message
    with pytest.raises(LezaConfigError):
        ProxyTrust(f"10.0.0.1, {entry}")


@pytest.mark.parametrize(
    "entry", ["not-an-ip", "10.0.0.1:80", "1.2.3.4/33", "10.0.0.256", "1.2.3.4/x", "::1::2"]
)
def test_unparseable_entries(entry: str) -> None:
    with pytest.raises(LezaConfigError, match="trusted_proxies") as info:
        ProxyTrust(["10.0.0.1", entry])
    assert repr(entry) in str(info.value)


@pytest.mark.parametrize("items", [[1], ["10.0.0.1", None], [b"10.0.0.1"]])
def test_non_string_items(items: list[Any]) -> None:
    with pytest.raises(LezaConfigError, match="not a string") as info:
        ProxyTrust(items)
    assert repr(items[-1]) in str(info.value)


@pytest.mark.parametrize("value", [b"10.0.0.1", 42])
def test_non_iterable_or_bytes(value: Any) -> None:
    with pytest.raises(LezaConfigError, match="trusted_proxies"):
        ProxyTrust(value)


def test_accepted_forms() -> None:
    pt = ProxyTrust(" 10.0.0.0/8 , 192.168.1.7,,[2001:db8::1], 172.16.0.9/12, ::ffff:100.64.0.1")
    assert pt.networks == (
        "10.0.0.0/8",
        "192.168.1.7/32",
        "2001:db8::1/128",
        "172.16.0.0/12",
        "100.64.0.1/32",
    )
    assert ProxyTrust(["10.0.0.0/8, 10.0.0.0/8", "fe80::1%eth0"]).networks == (
        "10.0.0.0/8",
        "fe80::1/128",
    )
    assert ProxyTrust(None).networks == ()
    assert ProxyTrust("").networks == ()
    assert ProxyTrust(iter(["10.0.0.1"])).networks == ("10.0.0.1/32",)
    assert "10.0.0.1/32" in repr(ProxyTrust("10.0.0.1"))


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", True),
        ("10.1.2.3:8080", True),
        ("::ffff:10.1.2.3", True),
        ("192.168.0.1", True),
        ("192.168.0.2", False),
        ("[2001:db8:ffff::9]:443", True),
        ("2001:db8:fffe::9", False),
        ("11.0.0.1", False),
        ("garbage", False),
        ("", False),
        (42, False),
    ],
)
def test_is_trusted(trust: ProxyTrust, ip: Any, expected: bool) -> None:
    assert trust.is_trusted(ip) is expected
    assert trust.is_trusted(ip) is expected  # cached


def test_nobody_trusted_by_default() -> None:
    assert not ProxyTrust().is_trusted("10.0.0.1")


# -- properties -----------------------------------------------------------------------------------

HEADER_TEXT = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.text(alphabet='for=";,[]:._-%\\ \t\r\n\x00\x1b0123456789abcdefF:unknown', max_size=120),
    st.lists(
        st.one_of(
            st.ip_addresses().map(str),
            st.sampled_from(["10.0.0.2", "192.168.0.1", "unknown", "_x", "", " ", '"']),
            st.text(max_size=12),
        ),
        max_size=80,
    ).map(", ".join),
)
PEER = st.one_of(
    st.none(),
    st.sampled_from([PROXY, "192.168.0.1", "2001:db8:ffff::1", "203.0.113.9"]),
    st.ip_addresses().map(str),
    st.text(max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(peer=PEER, xff=HEADER_TEXT, fwd=HEADER_TEXT)
def test_resolve_never_raises_and_stays_printable(
    peer: str | None, xff: str | None, fwd: str | None
) -> None:
    trust = ProxyTrust(TRUSTED)
    addr = trust.resolve(peer, xff, fwd)
    assert isinstance(addr, ClientAddress)
    for text in (addr.client_ip, addr.peer_ip, *addr.chain):
        assert _printable(text)
        assert len(text) <= max(MAX_TOKEN, 39)
    assert all(trust.is_trusted(hop) for hop in addr.chain)
    if peer is None or not trust.is_trusted(peer):
        assert addr.client_ip == addr.peer_ip
        assert addr.chain == ()
        assert not addr.header_malformed
    if addr.ip_valid and addr.client_ip:
        assert trust.resolve(addr.client_ip, None, None).client_ip == addr.client_ip


@settings(max_examples=200, deadline=None)
@given(fwd=HEADER_TEXT)
def test_untrusted_peer_never_reads_headers(fwd: str | None) -> None:
    addr = ProxyTrust().resolve("203.0.113.9", fwd, fwd)
    assert addr == ClientAddress("203.0.113.9", True, "203.0.113.9", (), False)
