"""Property: no input makes the admin view answer 500 or drop its security headers
(issue 13, item 5, second half).

Hypothesis builds requests to every route of the ASGI, WSGI and Django mounts
— each tab as HTML and JSON, STATE (``/state``, ``/api/state``: its ``sort``,
``refresh`` and ``last`` too) and ACCESS's ``endpoint`` filter,
``/api/availability``, ``/``, the health checks, the traceability views
(issue 15: ``/requests/<id>``, ``/sessions/<id>``, ``/performers/<id>``,
``/audit/<type>/<id>``, ``/records/<id>``, with hostile ids in the path, raw
or percent-encoded), made-up paths, the revoke form and the REVOKE ALL
SESSIONS form — whose query parameters, form fields (``csrf_token``,
``session_id``, ``back``, ``confirm``, ``view``, ``performer_id``), path
segments and origin headers hold hostile values: non-ASCII digits, numbers
past 64 bits, negatives, floats, 10 KB strings, lone surrogates and
percent-encoded invalid UTF-8, control characters, nested percent-encodings,
open-redirect shapes.
Values are sent percent-encoded, raw, double-encoded or as random bytes.

The view stops at the first input it refuses, so each example sends one
request per input with that one hostile and the others valid (the revoke
forms with a valid CSRF token and origin), then one request that is hostile
throughout. Hostile values are picked evenly from per-input corpora with a
``Random`` Hypothesis seeds, or built by Hypothesis: its own draws repeat
themselves from one example to the next, and the bugs this guards against
(``limit=²``, a 20-digit cursor, ``back=limit=²``) were found in a few
examples this way and not in hundreds without it.

For every request, on SQLite and on PostgreSQL: no exception escapes the
mount, the status is one the view documents (never 500 or 503), the response
carries every security header, and a redirect stays on the SESSION tab. Runs
are deterministic (``derandomize=True``) and take about a second or two per
mount and database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from random import Random
from typing import Any
from urllib.parse import quote

import pytest
from dashboard_mounts import (
    ORIGIN,
    AsgiMount,
    DjangoMount,
    WsgiMount,
    cookie_pair,
    django_leza,
    django_setup,
    form_token,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from leza_middleware import Leza, Performer
from leza_middleware.events import AccessEvent, AuditEvent, SessionEvent
from leza_middleware.ids import new_event_id

pytestmark = pytest.mark.both_databases

SESSION = "sess0000000000000001"
REQUEST = "req-fuzz-0001"
TABS = ("access", "sessions", "audit", "advisories", "logs")
#: The traceability views (issue 15), with ids that name recorded things.
TRACED = (
    f"/requests/{REQUEST}",
    f"/sessions/{SESSION}",
    "/performers/bob",
    "/audit/item/42",
)
ROUTES = (
    *(f"/{t}" for t in TABS),
    *(f"/api/{t}" for t in TABS),
    "/state",
    "/api/state",
    *TRACED,
    *(f"/api{t}" for t in TRACED),
    "/api/availability",
    "/",
    "/health/live",
    "/health/ready",
)
#: Where a view's id goes in its path: the root, then the hostile id.
ID_ROOTS = ("/requests/", "/sessions/", "/performers/", "/audit/", "/audit/item/", "/records/")
#: What the view answers; a 500 (or a 503: the storage is up) is a failure.
EXPECTED = {200, 303, 400, 403, 404, 405, 413}
PARAMS = ("from", "to", "action", "performer", "limit", "cursor", "revoked", "gone",
          "endpoint", "sort", "refresh", "last", "revoked_all")  # fmt: skip
FIELDS = ("csrf_token", "session_id", "back", "confirm", "view")
ALL_FIELDS = ("csrf_token", "performer_id", "confirm")  # REVOKE ALL SESSIONS

SPECIAL = [
    "", " ", "²", "٣", "\uff11\uff12", "߁", "0", "-1", "+5", "1.5", "1e3", "0x10", "NaN", "inf",
    "9" * 40, str(2**63 - 1), str(2**63), str(2**64), "50", "1000", "1001",
    "9223372036854775807_abc", "9223372036854775808_abc", "99999999999999999999999_abc",
    "1_²", "1_" + "a" * 200, "0_0",
    "2025-01-01", "2025-W01-1", "20250101", "0000-01-01", "0001-01-01", "9999-12-31",
    "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2025-02-30T25:61",
    "active", "ended", "access", "denied", "1", SESSION,
    "\x00", "a\r\nb", "\x85", "\u2028", "\ud800", "\udfff", "\ufeff", "\u202e",
    "<script>alert(1)</script>", "'\"", "%", "%%", "%zz", "%C0%AF", "&", "=", "a=b&c",
    "//evil.example", "/\\evil.example", "https://evil.example", "%2F%2Fevil.example",
    "%252F%252Fevil.example", "javascript:alert(1)", "from=2025-01-01&next=//evil.example",
    "x" * 10_240, "²" * 5_000, "\ud800" * 3_000,
]  # fmt: skip

#: Whole numbers as a hostile client writes them: digits ``str.isdigit`` accepts and
#: ``int`` does not (``'²'``), other scripts' digits, around and past 64 bits, signs,
#: floats. A list to sample from: Hypothesis draws from it evenly, where text built
#: character by character would rarely come up with one of these.
NUMBERS = [
    *(f"{a}{odd}{b}" for odd in ("²", "³", "¹", "①", "\uff19", "٣", "१", "߁")
      for a, b in (("", ""), ("1", ""), ("", "0"), ("12", "34"))),
    *(str(2**63 + d) for d in (-2, -1, 0, 1)), str(2**64), "9" * 19, "9" * 20, "9" * 40,
    "-1", "-0", "+5", "0", "00050", "1000", "1001", "1.5", "1e3", "0x10", "1_000", " 50 ",
    "nan", "inf", "-9223372036854775809",
]  # fmt: skip
CURSORS = [f"{n}_{ident}" for n in NUMBERS for ident in ("abc", "z" * 100, "²", "a_b", "")]
times = st.one_of(
    st.dates().map(lambda d: d.isoformat()),
    st.builds(
        lambda d, offset: d.isoformat() + offset,
        st.datetimes(),
        st.sampled_from(["", "Z", "+23:59", "-23:59", "+05:30", "+24:00"]),
    ),
)
#: Values Hypothesis builds itself, of any shape.
values = st.one_of(
    times,
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats().map(repr),
    st.text(max_size=40),  # any code point: surrogates and controls included
    st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6),
)
#: The revoke form's ``back`` holds the SESSION tab's filters as a query string, so
#: its hostile values are hostile filters and locations.
BACKS = [
    *SPECIAL,
    *(f"limit={n}" for n in NUMBERS),
    *(f"action=active&cursor={c}" for c in CURSORS[::3]),
    *(f"from={t}" for t in SPECIAL[27:37]),
    "from=2025-01-01&from=2025-01-02", "back=//evil.example", "%0d%0aLocation:%20//evil",
]  # fmt: skip
#: Each input's own hostile values, picked evenly: Hypothesis's own draws repeat
#: themselves from one example to the next (it mutates earlier examples), and
#: would rarely build ``'²'`` or a 20-digit cursor character by character.
#: STATE's and ACCESS's own inputs: the endpoint filter, sort, refresh, quick periods.
ENDPOINTS = [
    "GET", "GET ", "GET /items/{item_id}", "(unmatched)", "OTHER /x", "get /x", "GET  /x",
    "/" * 5000, "GET /" + "x" * 4200, "\u2028GET /", "GET /\x00", "PROPFIND /x", "{", "%",
    *SPECIAL,
]  # fmt: skip
CORPUS = {
    "endpoint": ENDPOINTS,
    "sort": ["p95", "requests", "P95", "p95 ", "p99", "", *SPECIAL[:20]],
    "refresh": ["30", "60", "300", "0", "00", "61", "-1", "1e3", *NUMBERS[:10]],
    "last": ["1h", "24h", "7d", "30d", "1H", "2h", "400d", "0h", *SPECIAL[:20]],
    "limit": NUMBERS,
    "cursor": CURSORS,
    "back": BACKS,
    "session_id": [SESSION + "²", SESSION[:7], "x" * 129, "../" * 10, SESSION.upper(), *SPECIAL],
    "performer_id": ["bob", "b" * 513, "bob\x00", " bob", "bob/../x", "%2e%2e", *SPECIAL],
    "view": ["session", "performer", "Session", "//evil.example", *SPECIAL],
    "revoked_all": NUMBERS,
    # A path id: a valid one with a twist, ids of the other views, and anything.
    "id": [
        REQUEST,
        SESSION,
        "bob",
        "42",
        REQUEST + "²",
        "a" * 129,
        "p" * 513,
        "..",
        ".",
        "%2F",
        "a/b",
        "item/42/x",
        "%00",
        "a\u2028b",
        *SPECIAL,
    ],
}
ENCODINGS = ("pct", "pct", "raw", "double", "bytes")
#: Valid filters sent along with one hostile parameter: the view stops at the first
#: bad parameter, so the others are valid for the hostile one to be reached.
BACKGROUND = [
    {},
    {"from": "2025-01-01", "to": "2025-12-31"},
    {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01", "limit": "25"},
    {"performer": "bob", "cursor": "1776000000000000_abc"},
    {"action": "active", "limit": "1000"},
]


def _pct(raw: bytes) -> bytes:
    return quote(raw, safe="").encode()


def _encoded(value: str, how: str, rnd: Random) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")  # a lone surrogate: bytes that are not UTF-8
    if how == "pct":
        return _pct(raw)
    if how == "raw":
        return raw
    if how == "double":
        return _pct(_pct(raw))
    return _pct(rnd.randbytes(rnd.randint(1, 12)))  # random bytes


def _hostile(draw: Any, rnd: Random, name: str) -> bytes:
    """A hostile value for input ``name``, encoded one of the ways a client may."""
    corpus = CORPUS.get(name, SPECIAL)
    value = rnd.choice(corpus) if rnd.random() < 0.7 else draw(values)
    return _encoded(value, rnd.choice(ENCODINGS), rnd)


def _query(pairs: list[tuple[str, bytes]]) -> bytes:
    return b"&".join(_pct(k.encode("utf-8", "surrogatepass")) + b"=" + v for k, v in pairs)


@st.composite
def queries(draw: Any) -> bytes:
    """Any query at all: the view's parameters and made-up or non-UTF-8 names, any
    of them repeated, in any order."""
    rnd = draw(st.randoms(use_true_random=True))
    pairs = []
    for _ in range(rnd.randint(0, 8)):
        name = rnd.choice(PARAMS) if rnd.random() < 0.7 else draw(st.text(max_size=8))
        pairs.append((name, _hostile(draw, rnd, name)))
    return _query(pairs)


@st.composite
def paths(draw: Any) -> str:
    """A route of the view, a traceability view with a hostile id, or segments of any text."""
    rnd = draw(st.randoms(use_true_random=True))
    if rnd.random() < 0.4:
        return rnd.choice(ROUTES)
    if rnd.random() < 0.6:
        value = rnd.choice(CORPUS["id"]) if rnd.random() < 0.7 else draw(values)
        how = rnd.choice(("raw", "raw", "pct", "double"))
        if how != "raw":  # a client that sends the id percent-encoded, once or twice
            value = _encoded(value, how, rnd).decode("ascii")
        return rnd.choice(("", "/api")) + rnd.choice(ID_ROOTS) + value
    return "/" + "/".join(draw(st.lists(st.text(max_size=12), min_size=1, max_size=4)))


@st.composite
def focused(draw: Any) -> list[tuple[str, str, bytes]]:
    """One request per parameter of the view, that one hostile and the rest valid,
    to a route picked for it; then one with any query to any path."""
    rnd = draw(st.randoms(use_true_random=True))
    sent = []
    for name in PARAMS:
        background = rnd.choice(BACKGROUND)
        pairs = [(k, _pct(v.encode())) for k, v in background.items() if k != name]
        pairs.insert(rnd.randint(0, len(pairs)), (name, _hostile(draw, rnd, name)))
        sent.append((rnd.choice(("GET", "GET", "HEAD")), rnd.choice(ROUTES), _query(pairs)))
    sent.append(("GET", draw(paths()), draw(queries())))
    sent.append((rnd.choice(("GET", "HEAD")), draw(paths()), b""))
    return sent


ORIGINS = [
    [],
    [("Origin", ORIGIN)],
    [("Origin", ORIGIN), ("Sec-Fetch-Site", "same-origin")],
    [("Origin", "https://evil.example")],
    [("Origin", "null")],
    [("Origin", "http://[::1")],
    [("Referer", ORIGIN + "/leza/sessions")],
    [("Referer", "https://evil.example/x")],
    [("Referer", "%00")],
    [("Sec-Fetch-Site", "cross-site")],
    [("Sec-Fetch-Site", "same-site")],
    [("Sec-Fetch-Site", "bogus")],
]


@st.composite
def forms(draw: Any, token: str) -> list[bytes]:
    """Revoke forms: one per field, that one hostile and the rest valid (a valid
    token, the active session, asking first); then one with any fields at all."""
    rnd = draw(st.randoms(use_true_random=True))
    valid = {"csrf_token": token, "session_id": SESSION, "back": "action=active", "confirm": "",
             "view": ""}  # fmt: skip
    bodies = []
    for name in (*FIELDS, "back", "back"):  # back, a query string, has the most to go wrong
        pairs = [(k, _pct(v.encode())) for k, v in valid.items() if k != name]
        pairs.insert(rnd.randint(0, len(pairs)), (name, _hostile(draw, rnd, name)))
        bodies.append(_query(pairs))
    anything = [(k, _hostile(draw, rnd, k)) for k in rnd.choices(FIELDS, k=rnd.randint(0, 6))]
    bodies.append(_query([("csrf_token", token.encode()), *anything]))
    return bodies


FUZZ = settings(
    max_examples=75,
    derandomize=True,  # the same examples every run: no flaky CI
    database=None,
    # No shrinking: the failed assertion names the one request that failed, and
    # shrinking examples of a dozen database-backed requests takes many minutes.
    phases=[Phase.explicit, Phase.generate],
    deadline=None,  # database round trips vary with the machine's load
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # the mount serves every example alike
    ],
)


@pytest.fixture(scope="module")
def _django() -> None:
    django_setup()


@pytest.fixture(params=["asgi", "wsgi", "django"])
def mount(
    request: pytest.FixtureRequest, make_leza: Any, storage_url: str, tmp_path: Path
) -> Iterator[Any]:
    leza: Leza = make_leza(app_name="shop")
    now = time.time_ns() // 1000
    bob = Performer(id="bob", name="Bob")
    leza.storage.write(
        [SessionEvent(id=new_event_id(now), ts=now, action="session_start", session_id=SESSION,
                      performer=bob, ip="10.0.0.1"),
         AccessEvent.build(id=new_event_id(now), ts=now, action="access", method="GET",
                           endpoint="/items/42", route="/items/{id}", status=200, duration_us=9,
                           outcome="success", reason="ok", request_id=REQUEST,
                           client_ip="10.0.0.1", ip_valid=True, peer_ip="10.0.0.1",
                           performer=bob, session_hash=SESSION),
         AuditEvent(id=new_event_id(now), ts=now, action="update", entity_type="item",
                    entity_id="42", actor=bob, request_id=REQUEST, session_id=SESSION,
                    chain="c" * 16, seq=1, hash="h")]
    )  # fmt: skip
    if request.param == "django":
        request.getfixturevalue("_django")
        with django_leza(storage_url, tmp_path):
            yield DjangoMount()
        return
    made = AsgiMount(leza) if request.param == "asgi" else WsgiMount(leza)
    yield made
    made.close()


def check(answer: Any, where: Any) -> None:
    assert answer.status in EXPECTED, (where, answer.status, answer.text[:400])
    assert answer.missing_security_headers() == [], (where, answer.headers)


def test_any_query_on_any_route(mount: Any) -> None:
    @FUZZ
    @given(focused())
    def probe(sent: list[tuple[str, str, bytes]]) -> None:
        for method, path, query in sent:
            check(mount.request(method, path, query), (mount.name, method, path, query[:200]))

    probe()


def test_any_revoke_form(mount: Any) -> None:
    page = mount.request("GET", "/sessions")
    found = form_token(page.text)
    assert found is not None
    field, token = found
    cookie = cookie_pair(page, "leza_dash_csrf")
    ours = [] if cookie is None else [("Cookie", cookie)]  # Django's client keeps its own
    browser = [("Origin", ORIGIN), *ours]
    cookies = [[], [("Cookie", "leza_dash_csrf=" + "ab" * 32)], [("Cookie", "\x7f=;;=")], ours]
    anyhow = st.tuples(
        st.sampled_from(["POST", "POST", "PUT", "DELETE"]),
        st.sampled_from(ORIGINS),
        st.sampled_from(cookies),
        queries(),
    )

    @FUZZ
    @given(forms(token), anyhow)
    def probe(bodies: list[bytes], how: tuple[str, list[Any], list[Any], bytes]) -> None:
        # The focused forms as the dashboard's own page sends them; the last any way at all.
        method, origin, cookie, query = how
        sent = [("POST", browser, b"", body) for body in bodies[:-1]]
        sent.append((method, [*origin, *cookie], query, bodies[-1]))
        for method, headers, query, body in sent:
            if field != "csrf_token":  # Django's field name
                body = body.replace(b"csrf_token=", field.encode() + b"=", 1)
            answer = mount.request(method, "/sessions/revoke", query, body=body, headers=headers)
            check(answer, (mount.name, method, body[:200], headers))
            location = answer.header("location")
            assert location is None or location.startswith("/leza/sessions?"), location

    probe()


@st.composite
def all_forms(draw: Any, token: str) -> list[bytes]:
    """REVOKE ALL SESSIONS forms: one per field hostile, the others valid."""
    rnd = draw(st.randoms(use_true_random=True))
    valid = {"csrf_token": token, "performer_id": "bob", "confirm": ""}
    bodies = []
    for name in ALL_FIELDS:
        pairs = [(k, _pct(v.encode())) for k, v in valid.items() if k != name]
        pairs.insert(rnd.randint(0, len(pairs)), (name, _hostile(draw, rnd, name)))
        bodies.append(_query(pairs))
    anything = [(k, _hostile(draw, rnd, k)) for k in rnd.choices(ALL_FIELDS, k=rnd.randint(0, 4))]
    bodies.append(_query([("csrf_token", token.encode()), *anything]))
    return bodies


def test_any_revoke_all_form(mount: Any) -> None:
    page = mount.request("GET", "/performers/bob")
    assert page.status == 200, page.text[:300]
    found = form_token(page.text)
    assert found is not None
    field, token = found
    cookie = cookie_pair(page, "leza_dash_csrf")
    browser = [("Origin", ORIGIN), *([] if cookie is None else [("Cookie", cookie)])]

    @FUZZ
    @given(all_forms(token), st.sampled_from(ORIGINS))
    def probe(bodies: list[bytes], origin: list[Any]) -> None:
        sent = [(browser, body) for body in bodies[:-1]] + [(origin, bodies[-1])]
        for headers, body in sent:
            if field != "csrf_token":  # Django's field name
                body = body.replace(b"csrf_token=", field.encode() + b"=", 1)
            answer = mount.request("POST", "/sessions/revoke-all", body=body, headers=headers)
            check(answer, (mount.name, body[:200], headers))
            location = answer.header("location")
            if location is not None:  # a performer's view on this mount: one encoded segment
                path = location.split("?", 1)[0]
                assert path.startswith("/leza/performers/"), location
                assert "/" not in path[len("/leza/performers/") :], location

    probe()
