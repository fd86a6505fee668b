"""Traceability on Django's mount (issue 15, item 6), on the test project (tests/djangoproject).

Real requests through Django's whole handler and middleware stack (the test
client): dora signs in with her password from Frankfurt, renames a role (an
audited model change: ``auth.group``), is refused a page (Django logs the
403 on ``django.request``, which goes to LOG), and is seen again from London.
Then a staff user reads it back through ``/leza/`` (SQLite and PostgreSQL):

* the request, session, performer and entity views, as HTML and JSON, hold
  what was recorded and link to each other;
* ``manage.py leza_trace … --json`` prints the API's JSON, and its text form
  lists the same records;
* unknown ids are the dashboard's 404 with its security headers;
* REVOKE ALL SESSIONS passes Django's CSRF check and ends dora's sessions.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from dashboard_mounts import SECURITY
from mmdb_factory import FRANKFURT_IP, LONDON_IP

from leza_middleware import Leza

pytestmark = pytest.mark.both_databases

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)


@pytest.fixture(scope="module")
def _django() -> None:
    from dashboard_mounts import django_setup

    django_setup()


@pytest.fixture
def leza(_django: None, storage_url: str, tmp_path: Path, city_db: Path) -> Iterator[Leza]:
    from django.test import override_settings

    from leza_middleware.django import get_leza

    conf = {
        "storage": storage_url,
        "geoip_db": str(city_db),
        "trusted_proxies": ["127.0.0.1"],
        "spill_dir": str(tmp_path / "spill"),
        "flush_interval": 0.05,
        "secret_key": "django-trace-secret-0123456789",
        "app_name": "djangoproject",
        "audit_models": {"auth.Group": {}},
    }
    with override_settings(LEZA=conf):
        instance = get_leza()
        handler = instance.logging_handler()
        logging.getLogger("django.request").addHandler(handler)
        try:
            yield instance
        finally:
            logging.getLogger("django.request").removeHandler(handler)
            instance.shutdown(timeout=5)


def _user(name: str, *, staff: bool = False, first: str = "") -> Any:
    from django.contrib.auth.models import User

    user, _ = User.objects.get_or_create(username=name)
    user.is_staff = staff
    user.first_name = first
    user.last_name = "Trace" if first else ""
    user.set_password("pw-" + name)
    user.save()
    return user


def _rid(response: Any, status: int = 200) -> str:
    assert response.status_code == status, (response.status_code, response.content[:200])
    return str(response.headers["X-Request-ID"])


def test_django_traceability_views_and_command(leza: Leza) -> None:
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.test import Client

    dora = _user("trace-dora", first="Dora")
    role = Group.objects.create(name=f"editors-{dora.pk}-{id(leza)}")
    client = Client(headers={"user-agent": CHROME, "x-forwarded-for": FRANKFURT_IP})
    login = _rid(client.post("/login/", {"username": "trace-dora", "password": "pw-trace-dora"}))
    rename = _rid(client.post(f"/roles/{role.pk}/rename/", {"name": role.name + "-desk"}))
    refused = _rid(client.get("/forbidden/"), 403)
    client.defaults["HTTP_X_FORWARDED_FOR"] = LONDON_IP
    _rid(client.get("/me/"))
    assert leza.flush(10)

    staff = Client()
    staff.force_login(_user("trace-staff", staff=True))

    def api(path: str) -> Any:
        r = staff.get("/leza/api" + path)
        assert r.status_code == 200, (path, r.status_code, r.content[:300])
        return r.json()

    view = api(f"/requests/{rename}")
    assert [i["kind"] for i in view["items"]] == ["access", "audit"]
    access, change = view["items"]
    assert access["route"] == "/roles/{pk}/rename/"
    assert (change["entity_type"], change["entity_id"]) == ("auth.group", str(role.pk))
    assert change["actor"]["name"] == "Dora Trace"
    sid = view["session_id"]
    assert sid is not None
    assert change["session_id"] == sid
    page = staff.get(f"/leza/requests/{rename}").content.decode()
    assert f'href="/leza/sessions/{sid}"' in page
    assert f'href="/leza/performers/{dora.pk}"' in page
    assert f'href="/leza/audit/auth.group/{role.pk}"' in page

    forbidden = api(f"/requests/{refused}")
    assert [i["kind"] for i in forbidden["items"]] == ["access", "log"]
    assert forbidden["items"][0]["action"] == "denied"
    assert forbidden["items"][1]["message"] == "Forbidden (Permission denied): /forbidden/"

    session = api(f"/sessions/{sid}")
    assert session["session"]["performer"]["id"] == str(dora.pk)
    # The sign-in starts the session (its response sets the key), then the rest, newest first.
    assert [r["request_id"] for r in session["requests"]["items"]][1:] == [refused, rename, login]
    assert [c["request_id"] for c in session["changes"]] == [rename]
    assert [p["city"] for p in session["places"]] == ["Frankfurt am Main", "London"]

    performer = api(f"/performers/{dora.pk}")
    assert performer["performer"]["name"] == "Dora Trace"
    assert [r["request_id"] for r in performer["refused"]] == [refused]
    assert [c["request_id"] for c in performer["changes"]] == [rename]
    assert [c["country_code"] for c in performer["countries"]] == ["DE", "GB"]

    history = api(f"/audit/auth.group/{role.pk}")
    assert [i["action"] for i in history["items"]] == ["create", "update"]
    assert history["items"][1]["request_id"] == rename
    assert all(i["intact"] for i in history["items"])
    page = staff.get(f"/leza/audit/auth.group/{role.pk}").content.decode()
    assert f'href="/leza/requests/{rename}"' in page

    # manage.py leza_trace: the API's JSON, and a text form listing the same records.
    for args, expected in (
        (["request", rename], view),
        (["session", sid], session),
        (["performer", str(dora.pk)], performer),
    ):
        out = io.StringIO()
        call_command("leza_trace", *args, "--json", stdout=out)
        assert json.loads(out.getvalue()) == expected, args
    out = io.StringIO()
    call_command("leza_trace", "entity", "auth.group", str(role.pk), "--json", stdout=out)
    assert {**json.loads(out.getvalue()), "chain": None} == {**history, "chain": None}
    out = io.StringIO()
    call_command("leza_trace", "request", rename, stdout=out)
    text = out.getvalue()
    assert f"request {rename}: 1 access, 0 log, 1 audit, 0 advisory" in text
    assert "auth.group:" in text

    # Unknown ids: the dashboard's own 404, with its headers.
    for path in ("/leza/requests/nope", "/leza/api/performers/nobody-here", "/leza/sessions/x"):
        r = staff.get(path)
        assert r.status_code == 404, path
        for name, value in SECURITY.items():
            assert r.headers[name] == value


def test_django_revoke_all_passes_djangos_csrf_check(leza: Leza) -> None:
    from django.test import Client

    erin = _user("trace-erin")
    phones = [Client(headers={"user-agent": CHROME}) for _ in range(2)]
    for phone in phones:
        phone.post("/login/", {"username": "trace-erin", "password": "pw-trace-erin"})
        assert phone.get("/me/").status_code == 200
    assert leza.flush(10)
    assert len(leza.sessions.active(performer_id=str(erin.pk))) == 2

    staff = Client(enforce_csrf_checks=True)
    staff.force_login(_user("trace-staff", staff=True))
    page = staff.get(f"/leza/performers/{erin.pk}").content.decode()
    token = re.search(r'class="revoke revoke-all".*?name="csrfmiddlewaretoken" value="([^"]+)"',
                      page, re.S)  # fmt: skip
    assert token, "no Django CSRF token in the REVOKE ALL SESSIONS form"
    form = {"performer_id": str(erin.pk), "confirm": "1"}
    assert staff.post("/leza/sessions/revoke-all", form).status_code == 403  # no token
    done = staff.post("/leza/sessions/revoke-all", {**form, "csrfmiddlewaretoken": token.group(1)})
    assert done.status_code == 303
    assert done["Location"] == f"/leza/performers/{erin.pk}?revoked_all=2"
    for phone in phones:
        assert wait_for(lambda phone=phone: phone.get("/me/").status_code == 401)
    assert leza.flush(10)
    [audit] = leza.query.audit(action="revoke_all")
    assert audit["entity_id"] == str(erin.pk)
    assert audit["actor"]["name"] == "trace-staff"
