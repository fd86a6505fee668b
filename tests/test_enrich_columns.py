"""The enricher's column fast paths give exactly what its general paths give.

A batch whose records all come from one peer without ``Forwarded`` is keyed by
X-Forwarded-For alone; a batch without errors maps outcomes by status alone; an
all-bytes request id column is decoded in one call. Each is checked against the
same records enriched through the general path (a batch that defeats the fast
path), value for value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mmdb_factory import FRANKFURT_IP, LONDON_IP

from leza_middleware import Leza
from leza_middleware.enrich.access import derive_outcome
from leza_middleware.events import AccessEvent
from leza_middleware.request_path import raw_access

PROXY = "10.0.0.1"
UA = b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


@pytest.fixture
def leza(tmp_path: Path, city_db: Path) -> Any:
    made = Leza(
        storage="memory://",
        geoip_db=str(city_db),
        spill_dir=str(tmp_path / "spill"),
        trusted_proxies=["10.0.0.0/8"],
        secret_key="tests-secret-key-0123456789",
    )
    made._build()
    yield made
    made.shutdown(timeout=2)


def records() -> list[tuple[Any, ...]]:
    xffs = [FRANKFURT_IP.encode(), LONDON_IP.encode(), b"2001:db8::1, 10.0.0.9",
            b"not-an-ip", b"", None, b"1.2.3.4, " + FRANKFURT_IP.encode()]  # fmt: skip
    return [
        raw_access(
            ts=1_767_000_000.0 + i,
            request_id=b"%032x" % i,
            peer=PROXY,
            user_agent=UA,
            x_forwarded_for=xff,
            status=(200, 404, 500, 403, 401, 302)[i % 6],
        )
        for i, xff in enumerate(xffs)
    ]


def same(a: AccessEvent, b: AccessEvent) -> None:
    """Equal but for the id (drawn per event)."""
    assert a.row[1:] == b.row[1:]
    assert (a.device, a.geo, a.performer) == (b.device, b.geo, b.performer)


def test_one_peer_batch_matches_the_general_path(leza: Any) -> None:
    raws = records()
    fast = leza.enricher.batch(raws)
    # Another peer in the batch: every record goes through the (peer, xff, fwd) memo.
    other = raw_access(ts=1_767_000_100.0, peer="192.0.2.9", request_id=b"x")
    general = leza.enricher.batch([*raws, other])[:-1]
    assert len(fast) == len(general) == len(raws)
    for a, b in zip(fast, general, strict=True):
        same(a, b)
    assert [e.client_ip for e in fast] == [
        FRANKFURT_IP, LONDON_IP, "2001:db8::1", "not-an-ip", PROXY, PROXY, FRANKFURT_IP,
    ]  # fmt: skip
    assert fast[0].geo is not None
    assert fast[0].geo.country_code == "DE"


def test_an_empty_forwarded_header_takes_the_general_path(leza: Any) -> None:
    raws = records()
    with_forwarded = [(*r[:12], b"", *r[13:]) for r in raws]  # forwarded = b""
    for a, b in zip(leza.enricher.batch(with_forwarded), leza.enricher.batch(raws), strict=True):
        same(a, b)


def test_outcomes_without_errors_match_those_with_an_error_in_the_batch(leza: Any) -> None:
    raws = records()
    failed = raw_access(ts=1_767_000_100.0, status=500, error="ValueError", request_id=b"e")
    general = leza.enricher.batch([*raws, failed])
    for e, raw in zip(general[:-1], raws, strict=True):
        assert (e.action, e.outcome, e.reason) == derive_outcome(raw[2])
    for a, b in zip(leza.enricher.batch(raws), general[:-1], strict=True):
        same(a, b)
    assert general[-1].reason == "Server error: 500 Internal Server Error (ValueError)"


@pytest.mark.parametrize(
    "ids",
    [
        [b"abc", b"def"],  # ASGI: bytes
        ["abc", "def"],  # WSGI: str
        [b"abc", "def"],  # mixed
    ],
)
def test_request_ids_are_text_whatever_the_adapter_gave(leza: Any, ids: list[Any]) -> None:
    raws = [raw_access(ts=1_767_000_000.0, request_id=rid, peer=PROXY) for rid in ids]
    assert [e.request_id for e in leza.enricher.batch(raws)] == ["abc", "def"]


def test_many_peers_keep_the_per_peer_memos_bounded(leza: Any) -> None:
    enricher = leza.enricher
    for k in range(50):  # a direct deployment: each batch from one client
        enricher.batch([raw_access(ts=1_767_000_000.0, peer=f"192.0.2.{k}", request_id=b"r")])
    assert len(enricher._by_xff) <= 4
    (e,) = enricher.batch([raw_access(ts=1_767_000_000.0, peer="192.0.2.77", request_id=b"r")])
    assert e.client_ip == "192.0.2.77"
