"""examples/jsonlines_backend.py, a backend written from docs/storage.md alone
(write + query, and ``count``), plugged into a real app under uvicorn.

It must record what the app does (shipped as JSON lines and read back), serve
every dashboard tab and traceability view, HTML and JSON, with 200s and the
right content (STATE included, degrading per section: no traffic chart, said
why), and every feature it lacks must fail in one sentence before it starts:
``leza verify``, ``leza purge``, ``leza forget``, ``retention=``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mmdb_factory import LONDON_IP
from trace_scenario import Played, make_site_leza, play, serve, stop

from leza_middleware import Leza, LezaConfigError
from leza_middleware.cli import build_parser, execute
from leza_middleware.cli.common import Context
from leza_middleware.errors import StorageCapabilityError
from leza_middleware.storage import Capability, Storage, capabilities_of

DASH = "/leza"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "jsonlines_backend.py"
DOCS = "(docs/storage.md#capabilities)"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("jsonlines_backend", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


JSONLinesStorage = _example().JSONLinesStorage


class Site:
    def __init__(self, leza: Leza, stream: io.StringIO, played: Played, admin: httpx.Client):
        self.leza, self.stream, self.played, self.admin = leza, stream, played, admin

    def get(self, path: str, **params: str) -> httpx.Response:
        r = self.admin.get(DASH + path, params=params or None)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        return r

    def api(self, path: str, **params: str) -> Any:
        return self.get("/api" + path, **params).json()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, city_db: Path) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("example-backend")
    stream = io.StringIO()
    leza = make_site_leza(JSONLinesStorage(stream, name="test"), city_db, tmp)  # type: ignore[arg-type]
    leza.availability.check("queue", lambda: True, interval=0.2, timeout=0.1, retries=1)
    served = serve(leza)
    played = Played()
    admin = httpx.Client(base_url=served.url, headers={"X-Forwarded-For": LONDON_IP})
    try:
        played = play(leza, served.url)
        r = admin.post("/login", data={"username": "admin"}, follow_redirects=False)
        assert r.status_code == 303
        assert leza.flush(10)
        yield Site(leza, stream, played, admin)
    finally:
        admin.close()
        played.close()
        stop(served)
        leza.shutdown(timeout=5)


def _cli(leza: Leza, *argv: str) -> tuple[int, str]:
    err = io.StringIO()
    args = build_parser().parse_args(list(argv))
    ctx = Context(prog="leza", make_leza=lambda: leza, options={}, owns_leza=False,
                  stdout=io.StringIO(), stderr=err)  # fmt: skip
    return execute(args.command, ctx, args), err.getvalue()


def test_it_declares_only_count_and_the_built_ins_declare_theirs() -> None:
    from leza_middleware.storage import JSONLStorage, MemoryStorage

    assert capabilities_of(JSONLinesStorage(io.StringIO())) == {Capability.COUNT}
    assert capabilities_of(MemoryStorage()) == set(Capability)
    assert Capability.ROLLUPS not in capabilities_of(JSONLStorage("/tmp/unused-leza-jsonl"))


def test_every_event_is_shipped_once_as_a_json_line(site: Site) -> None:
    lines = [json.loads(line) for line in site.stream.getvalue().splitlines()]
    ids = [d["_id"] for d in lines]
    assert len(ids) == len(set(ids))  # idempotent: nothing shipped twice
    kinds = {d["kind"] for d in lines}
    assert {"access", "session", "audit", "log", "advisory", "check"} <= kinds
    shipped_rids = {d.get("request_id") for d in lines if d["kind"] == "access"}
    assert site.played.bob_rename in shipped_rids
    assert site.played.anonymous in shipped_rids
    assert "super-secret" not in site.stream.getvalue()  # the token was filtered before


def test_a_replayed_batch_is_stored_and_shipped_once() -> None:
    from leza_middleware.events import LogEvent

    stream = io.StringIO()
    storage = JSONLinesStorage(stream, keep=3)
    events = [LogEvent(id=f"e{i}", ts=1_000 + i, level=20, logger="t", message=f"m{i}")
              for i in range(5)]  # fmt: skip
    storage.write(events[:3])
    storage.write(events[1:4])  # a retry of part of a batch, plus one new event
    shipped = [json.loads(x)["_id"] for x in stream.getvalue().splitlines()]
    assert shipped == [e.id for e in events[:4]]
    from leza_middleware.storage import QueryFilter

    page = storage.query("log", QueryFilter(limit=2))
    assert [e.id for e in page.events] == [events[3].id, events[2].id]  # newest first
    assert page.next_cursor == (events[2].ts, events[2].id)
    rest = storage.query("log", QueryFilter(limit=2, cursor=page.next_cursor))
    assert [e.id for e in rest.events] == [events[1].id]
    assert rest.next_cursor is None


def test_every_tab_serves_json_with_what_was_recorded(site: Site) -> None:
    p = site.played
    access = site.api("/access", limit="500")["items"]
    recorded = {a["request_id"] for a in access}
    assert {p.bob_login, p.bob_rename, p.bob_denied, p.anonymous} <= recorded
    denied = site.api("/access", action="denied")["items"]
    assert [a["request_id"] for a in denied] == [p.bob_denied]
    bob = site.api("/access", performer="bob", limit="500")["items"]
    assert bob
    assert all(a["performer"]["id"] == "bob" for a in bob)
    sessions = {s["_id"]: s for s in site.api("/sessions")["items"]}
    assert {p.bob_phone_session, p.carol_session, p.bob_desktop_session} <= sessions.keys()
    assert sessions[p.bob_desktop_session]["end_reason"] == "logout"
    assert sessions[p.bob_phone_session]["geoLocationInfoOfIp"]["country_code"] == "SE"
    audit = site.api("/audit")["items"]
    assert {a["request_id"] for a in audit} >= {p.bob_rename, p.carol_rename}
    logs = site.api("/logs")["items"]
    assert any("renamed to 'Blue chair'" in r["message"] and r["request_id"] == p.bob_rename
               for r in logs)  # fmt: skip
    rules = {a["rule"] for a in site.api("/advisories")["items"]}
    assert {"new_country", "impossible_travel"} <= rules
    status = site.api("/availability")["status"]
    assert status["queue"]["state"] == "up"


def test_every_tab_serves_html_with_counts_and_the_chain_card_says_why(site: Site) -> None:
    p = site.played
    for slug, needle in (("access", p.bob_denied), ("sessions", p.carol_session),
                         ("audit", p.carol_rename), ("logs", "Blue chair"),
                         ("advisories", "new_country")):  # fmt: skip
        page = site.get(f"/{slug}").text
        assert needle in page, slug
    audit = site.get("/audit").text
    assert "cannot verify the audit chain" in audit
    assert "audit_chain" in audit
    r = site.admin.get(DASH + "/", follow_redirects=True)
    assert r.status_code == 200
    assert "STATE" in r.text


def test_state_degrades_per_section_and_shows_the_rest(site: Site) -> None:
    state = site.api("/state")
    assert state["traffic"]["kept"] is False
    assert "keeps rollups" in state["traffic"]["note"]
    assert "'rollups'" in state["traffic"]["note"]
    assert state["requests"] is None
    assert state["series"] == []
    assert state["sessions"]["active"] >= 2  # bob's phone, carol (and the admin)
    assert {c["country_code"] for c in state["sessions"]["by_country"]} >= {"SE", "GB"}
    assert state["sessions"]["logins"] >= 3  # counted with count(): no rollups
    assert state["sessions"]["login_failures"] == 1
    assert [s["name"] for s in state["services"]] == ["queue"]
    assert state["services"][0]["state"] == "up"
    assert {a["rule"] for a in state["advisories"]} >= {"new_country"}
    assert state["recorder"]["newest"]["access"] is not None
    page = site.get("/state").text
    assert "keeps rollups" in page
    assert "queue" in page


def test_traceability_views_html_and_json(site: Site) -> None:
    p = site.played
    view = site.api(f"/requests/{p.bob_rename}")
    kinds = sorted(i["kind"] for i in view["items"])
    assert kinds == ["access", "audit", "log"]
    assert view["session_id"] == p.bob_desktop_session
    session = site.api(f"/sessions/{p.bob_desktop_session}")
    assert session["session"]["_id"] == p.bob_desktop_session
    assert p.bob_rename in {r["request_id"] for r in session["requests"]["items"]}
    assert [c["request_id"] for c in session["changes"]] == [p.bob_rename]
    performer = site.api("/performers/bob")
    assert performer["performer"]["name"] == "Bob Builder"
    assert [r["request_id"] for r in performer["refused"]] == [p.bob_failed, p.bob_denied]
    assert {c["country_code"] for c in performer["countries"]} == {"DE", "GB", "SE"}
    entity = site.api("/audit/item/42")
    assert [i["request_id"] for i in entity["items"]] == [p.bob_rename, p.carol_rename]
    assert all(i["intact"] is True for i in entity["items"])
    for path in (f"/requests/{p.bob_rename}", f"/sessions/{p.bob_desktop_session}",
                 "/performers/bob", "/audit/item/42"):  # fmt: skip
        assert "Bob Builder" in site.get(path).text or p.bob_rename in site.get(path).text
    missing = site.admin.get(DASH + "/api/requests/no-such-request")
    assert missing.status_code == 404


def test_what_it_cannot_do_fails_in_one_sentence_before_it_starts(
    site: Site, tmp_path: Path
) -> None:
    storage = site.leza.storage
    name = storage.describe()
    code, err = _cli(site.leza, "verify")
    assert code == 2
    assert err == (f"leza: storage {name} cannot verify the audit chain: it does not declare "
                   f"the 'audit_chain' capability {DOCS}\n")  # fmt: skip
    for kind, lacks in (("access", "cannot purge events"), ("audit", "cannot purge audit rows"),
                        ("traffic", "keeps no traffic rollups")):  # fmt: skip
        code, err = _cli(site.leza, "purge", "--kind", kind, "--older-than", "1d", "--yes")
        assert code == 2, err
        assert err.count("\n") == 1, err  # one sentence
        assert f"storage {name} {lacks}" in err, err
        assert DOCS in err, err
    before = len(site.api("/access", performer="carol")["items"])
    code, err = _cli(site.leza, "forget", "--performer", "carol", "--yes")
    assert code == 2
    assert "cannot erase a person's data" in err
    assert "'erasure'" in err
    assert len(site.api("/access", performer="carol")["items"]) == before  # nothing erased
    assert site.leza.sessions.active("carol")  # nor revoked
    with pytest.raises(StorageCapabilityError, match="'audit_chain' capability") as caught:
        site.leza.audit.verify()
    assert caught.value.capability == "audit_chain"
    assert isinstance(caught.value, NotImplementedError)
    assert site.leza.query.count("access", action="denied") == 1  # declared: it counts

    expected = (r"retention\['access'\] needs a storage that can purge events: "
                r"JSONLinesStorage\(x\) does not declare the 'purge' capability")  # fmt: skip
    with pytest.raises(LezaConfigError, match=expected):
        Leza(storage=JSONLinesStorage(io.StringIO(), name="x"), geoip_db=False,
             retention={"access": "30d"}, spill_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(LezaConfigError, match=r"retention\['audit'\].*'audit_chain'"):
        Leza(storage=JSONLinesStorage(io.StringIO(), name="x"), geoip_db=False,
             retention={"audit": "400d"}, spill_dir=str(tmp_path))  # fmt: skip


# ----------------------------------------------------------------------------- declarations


class _WriteQuery(Storage):
    def write(self, events: Any) -> None:
        pass

    def query(self, kind: str, flt: Any) -> Any:
        from leza_middleware.storage import Page

        return Page([], None)


def test_a_declaration_is_checked_at_configuration(tmp_path: Path) -> None:
    class Typo(_WriteQuery):
        capabilities = frozenset({"purg"})  # type: ignore[assignment]

    class Claims(_WriteQuery):
        capabilities = frozenset({Capability.PURGE})

    class RedactsNothing(_WriteQuery):
        capabilities = frozenset({Capability.ERASURE, Capability.AUDIT_CHAIN})

        def iter_audit(self) -> Any:
            return iter(())

        def audit_checkpoints(self) -> Any:
            return []

        def forget_performer(self, performer_id: str, identifiers: Any) -> Any:
            return {}

    cases = ((Typo, "unknown capability 'purg'"),
             (Claims, r"declares the 'purge' capability but does not implement purge\(\) or "
                      r"purge_batches\(\)"),
             (RedactsNothing, r"does not implement redact_audit\(\)"))  # fmt: skip
    for cls, message in cases:
        with pytest.raises(LezaConfigError, match=message):
            Leza(storage=cls(), geoip_db=False, spill_dir=str(tmp_path))


def test_a_backend_written_before_capabilities_keeps_what_it_overrides(tmp_path: Path) -> None:
    class Old(_WriteQuery):
        keeps_rollups = True  # type: ignore[assignment]

        def purge(self, kind: str, before: int, batch_size: int = 10_000) -> int:
            return 0

        def count(self, kind: str, flt: Any, cap: int | None = None) -> int | None:
            return 7

        def iter_audit(self) -> Any:  # without audit_checkpoints: no audit_chain
            return iter(())

    old = Old()
    assert capabilities_of(old) == {Capability.PURGE, Capability.COUNT, Capability.ROLLUPS}
    assert old.keeps_rollups
    assert old.supports(Capability.PURGE)
    assert not old.supports(Capability.AUDIT_CHAIN)
    leza = Leza(storage=old, geoip_db=False, spill_dir=str(tmp_path), retention={"log": "7d"})
    try:
        assert leza.privacy.retention["log"] == 7 * 86400
        assert leza.query.count("access") == 7
    finally:
        leza.shutdown(2)
    bare = _WriteQuery()
    assert capabilities_of(bare) == frozenset()
    assert not bare.keeps_rollups
    with pytest.raises(StorageCapabilityError, match="cannot purge events: it does not declare"):
        bare.purge("access", 0)
