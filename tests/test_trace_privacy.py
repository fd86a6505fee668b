"""No traceability view shows what redaction removes everywhere else (issue 15, item 7).

The scenario of tests/trace_scenario.py is played through the real app with
``anonymize_ip="truncate"`` (every kind), once per database. Then:

* no view — request, session, performer, entity, record, as HTML and JSON,
  nor ``leza trace`` — holds a full client IP: only the stored /24s;
* after ``leza.forget("bob")`` his performer view is a 404 (HTML, JSON and
  the CLI), the views of his requests hold only the redacted audit row (its
  actor a pseudonym), his sessions' views neither his name nor his e-mail
  nor his IP, and the entity's history shows his change under the pseudonym.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import postgres_schema
from mmdb_factory import FRANKFURT_IP, LINKOPING_IP, LONDON_IP
from trace_scenario import Played, make_site_leza, play, serve, stop

from leza_middleware import Leza
from leza_middleware.cli import build_parser, execute
from leza_middleware.cli.common import Context

# (127.0.0.1 is in the Host the clients name, the server: not an address recorded of them.)
FULL_IPS = (FRANKFURT_IP, LONDON_IP, LINKOPING_IP, "9.9.9.9")


@pytest.fixture(params=["sqlite", "postgres"])
def anonymised(
    request: pytest.FixtureRequest, tmp_path: Path, city_db: Path
) -> Iterator[tuple[Leza, Played, httpx.Client]]:
    if request.param == "sqlite":
        yield from _site(f"sqlite:///{tmp_path / 'leza.db'}", city_db, tmp_path)
    else:
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            yield from _site(url, city_db, tmp_path)


def _site(storage: str, city_db: Path, tmp: Path) -> Iterator[tuple[Leza, Played, httpx.Client]]:
    leza = make_site_leza(storage, city_db, tmp, anonymize_ip="truncate")
    served = serve(leza)
    played = Played()
    admin = httpx.Client(base_url=served.url, headers={"X-Forwarded-For": LONDON_IP})
    try:
        played = play(leza, served.url)
        assert admin.post("/login", data={"username": "admin"}).status_code == 303
        yield leza, played, admin
    finally:
        admin.close()
        played.close()
        stop(served)
        leza.shutdown(timeout=5)


def views(played: Played) -> list[str]:
    requests = [
        played.bob_login, played.bob_rename, played.bob_london, played.bob_denied,
        played.bob_failed, played.carol_rename, played.bob_phone_login, played.anonymous,
    ]  # fmt: skip
    return [
        *(f"/requests/{r}" for r in requests),
        *(
            f"/sessions/{s}"
            for s in (played.bob_desktop_session, played.bob_phone_session, played.carol_session)
        ),
        "/performers/bob",
        "/performers/carol",
        "/audit/item/42",
    ]


def everything(admin: httpx.Client, paths: list[str]) -> dict[str, str]:
    """Each view's HTML and JSON, with the records' permalinks followed too."""
    out: dict[str, str] = {}
    for path in paths:
        for prefix in ("", "/api"):
            r = admin.get(f"/leza{prefix}{path}")
            out[prefix + path] = f"{r.status_code} {r.text}"
    return out


def cli(leza: Leza, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(prog="leza", make_leza=lambda: leza, options={}, owns_leza=False,
                  stdout=out, stderr=err)  # fmt: skip
    code = execute("trace", ctx, build_parser().parse_args(["trace", *args]))
    return code, out.getvalue() + err.getvalue()


def test_views_hold_only_the_anonymised_ips_and_nothing_of_a_forgotten_person(
    anonymised: tuple[Leza, Played, httpx.Client],
) -> None:
    leza, played, admin = anonymised
    shown = everything(admin, views(played))
    assert all(text.startswith("200 ") for text in shown.values()), {
        k: v[:60] for k, v in shown.items() if not v.startswith("200 ")
    }
    for path, text in shown.items():
        for ip in FULL_IPS:
            assert ip not in text, (path, ip)
    places = json.loads(shown[f"/api/sessions/{played.bob_desktop_session}"][4:])["places"]
    assert [p["ip"] for p in places] == ["161.35.214.0", "81.2.69.0"]
    for args in (("request", played.bob_rename), ("session", played.bob_desktop_session),
                 ("performer", "bob"), ("entity", "item", "42")):  # fmt: skip
        code, out = cli(leza, *args)
        assert code == 0
        for ip in FULL_IPS:
            assert ip not in out, (args, ip)

    report = leza.forget("bob")
    assert report.access == 9
    assert report.audit_redacted == 1
    gone = everything(admin, ["/performers/bob"])
    assert gone["/performers/bob"].startswith("404 ")
    assert gone["/api/performers/bob"].startswith("404 ")
    assert cli(leza, "performer", "bob")[0] == 1
    after = everything(admin, views(played))
    identity = ("Bob Builder", "bob@example.com")
    for path, text in after.items():
        for value in identity + FULL_IPS + ("161.35.214.0",):
            assert value not in text, (path, value)
    # His requests: only the redacted change of his rename is left, under a pseudonym.
    assert after[f"/requests/{played.bob_login}"].startswith("404 ")
    rename = json.loads(after[f"/api/requests/{played.bob_rename}"][4:])
    [change] = rename["items"]
    assert change["kind"] == "audit"
    assert change["actor"]["name"] == "[Forgotten]"
    assert change["actor"]["id"].startswith("forgotten:")
    # His sessions: kept (ended, anonymous), with no request of his left.
    desktop = json.loads(after[f"/api/sessions/{played.bob_desktop_session}"][4:])
    assert desktop["session"]["performer"] is None
    assert desktop["session"]["ip"] == ""
    assert desktop["requests"]["items"] == []
    assert desktop["places"] == []
    history = json.loads(after["/api/audit/item/42"][4:])
    assert [i["actor"]["name"] for i in history["items"]] == ["[Forgotten]", "Carol Danvers"]
    assert all(i["intact"] for i in history["items"])  # redacted under a signed entry
    assert leza.audit.verify()
