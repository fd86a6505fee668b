"""Property: no secret value reaches storage, whatever shape it comes in.

Hypothesis generates secret keys from the default list (spelt with other case
and separators, nested in brackets or dots, percent-encoded once or twice),
random distinctive values, and the places they travel: query pairs, URL-valued
parameters (encoded zero, one or two times, in the query or a fragment, or as
a userinfo password), a ``Referer``, log lines in every common spelling
(``key: value``, ``key=value``, ``key = "value"``, JSON, a Python repr, header
lines and header lists, a URL in a message, an exception) and audit states
nested at any depth. They go through a real Leza — a real Starlette app via
the test client, the logging handler, the audit API — into SQLite and
PostgreSQL; then every table's text, and for SQLite the raw database and WAL
bytes (and after a checkpoint), and finally the spill files, are searched for
every value. A marker that is not a secret must arrive, so the property
cannot hold by storing nothing.

Deterministic in CI: derandomized, no example database, modest counts.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from test_privacy import files_text, hits, sql_texts, sqlite_raw

from leza_middleware import Leza, LezaMiddleware

# Keys spelt as the default list's names (each is a secret as a whole segment).
NAMES = [
    "password", "passwd", "pwd", "passphrase", "secret", "client_secret", "token",
    "access_token", "refresh_token", "id_token", "api_key", "apikey", "private_key",
    "pin", "sig", "signature", "sid", "session", "session_id", "code", "key", "otp",
    "jwt", "auth", "authorization", "bearer", "credential", "credentials", "cookie",
    "csrf", "xsrf", "csrf_token", "ssn", "cvv",
]  # fmt: skip
# Names that make sense in every text form (a JSON or repr key).
PARENTS = ["user", "data", "form", "cfg", "x"]
# Keys that only look like secrets: their values must arrive as sent.
LOOKALIKES = ["position", "spinner", "keyboard", "monkey", "author", "signup", "inside",
              "zipcode", "country_code", "bypass", "token_type", "sessions", "page"]  # fmt: skip
EXAMPLES = 25

app_log = logging.getLogger("tests.secrets.property")


def _case(draw: st.DrawFn, name: str) -> str:
    style = draw(st.sampled_from(["lower", "upper", "title", "camel", "dash", "mixed"]))
    if style == "upper":
        return name.upper()
    if style == "title":
        return name.title()
    if style == "camel":
        head, *rest = name.split("_")
        return head + "".join(p.title() for p in rest)
    if style == "dash":
        return name.replace("_", "-")
    if style == "mixed":
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        return "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))
    return name


@st.composite
def keys(draw: st.DrawFn) -> str:
    """A secret key as it may appear in a query: nested, cased, maybe encoded."""
    name = _case(draw, draw(st.sampled_from(NAMES)))
    parent = draw(st.sampled_from(PARENTS))
    shape = draw(st.sampled_from(["{n}", "{p}[{n}]", "{n}[]", "{p}[0][{n}]", "{p}.{n}",
                                  "{p}[a][{n}]", "{p}.q.{n}"]))  # fmt: skip
    key = shape.format(n=name, p=parent)
    if draw(st.booleans()):  # one letter of the name percent-encoded, as a client may
        i = draw(st.integers(0, len(name) - 1))
        if name[i].isalpha():
            key = key.replace(name, f"{name[:i]}%{ord(name[i]):02X}{name[i + 1 :]}", 1)
    levels = draw(st.integers(0, 2))
    for _ in range(levels):
        key = quote(key, safe="")  # brackets (and what encodes them) encoded
    return key


values = st.text(alphabet="abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789-_",
                 min_size=10, max_size=16).map(lambda s: "Zq" + s + "9")  # fmt: skip


def encoded(text: str, levels: int) -> str:
    for _ in range(levels):
        text = quote(text, safe="")
    return text


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    """One request, some log lines and one audit record, with their secrets."""
    secrets: list[str] = []

    def secret() -> str:
        value = draw(values)
        secrets.append(value)
        return value

    plain_name = draw(st.sampled_from(NAMES))
    query: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        carrier = draw(st.sampled_from(["pair", "url", "fragment", "userinfo", "bare_url"]))
        key, levels = draw(keys()), draw(st.integers(0, 2))
        if carrier == "pair":
            query.append(f"{key}={secret()}")
        elif carrier == "url":
            inner = f"https://a.example/cb?x=1&{key}={secret()}&lang=en"
            query.append(f"next={encoded(inner, max(levels, 1))}")
        elif carrier == "fragment":
            inner = f"https://a.example/cb#{key}={secret()}&state=1"
            query.append(f"redirect={encoded(inner, max(levels, 1))}")
        elif carrier == "userinfo":
            query.append(f"u={encoded(f'https://me:{secret()}@h.example/x', levels)}")
        else:  # a path-and-query value, its "?" and "=" unencoded
            query.append(f"next=/cb?{key}={secret()}")
    # Not a secret (and holding none: no "Zq"): it must arrive as it was sent.
    marker = "Mk" + draw(st.text(alphabet="0123456789", min_size=8, max_size=8))
    lookalike = draw(st.sampled_from(LOOKALIKES))
    query.insert(draw(st.integers(0, len(query))), f"{lookalike}={marker}")
    referer = f"https://app.example/p?{draw(keys())}={secret()}&lang=en"

    name = draw(st.sampled_from(NAMES))
    key = draw(keys())
    logs = []
    for _ in range(draw(st.integers(1, 3))):
        form = draw(st.sampled_from(["colon", "eq", "eq_quoted", "json", "repr", "authz",
                                     "header_list", "url", "cookie", "kwargs"]))  # fmt: skip
        v = secret()
        logs.append(
            {
                "colon": f"{_case(draw, name)}: {v} then more",
                "eq": f"login {key}={v} user=bob",
                "eq_quoted": f'{name} = "{v}"',
                "json": json.dumps({"user": {_case(draw, name): v}, "n": 1}),
                "repr": repr({"user": {_case(draw, name): v}, "n": 1}),
                "authz": f"sent Authorization: Bearer {v} and {name}: {secret()}",
                "header_list": repr([(b"host", b"x"), (b"authorization", f"Basic {v}".encode())]),
                "url": f"redirect to https://a.example/cb?next={encoded(f'/x?{key}={v}', 1)}",
                "cookie": f"Cookie: theme=dark; sessionid={v}; lang=en",
                "kwargs": f"Login(user='bob', {plain_name}='{v}')",
            }[form]
        )
    exception = f"failed with {key}={secret()}"

    depth = draw(st.integers(0, 3))
    nested: Any = secret()
    audit_key = _case(draw, draw(st.sampled_from([n for n in NAMES if n not in ("code", "key")])))
    nested = {audit_key: nested, "plan": "pro"}
    for _ in range(depth):
        nested = draw(st.sampled_from([lambda n: {"inner": n}, lambda n: [n, "x"]]))(nested)
    after = {"state": nested, "callback": f"https://a.example/cb?{key}={secret()}&x=1"}
    return {
        "query": "&".join(query),
        "marker": marker,
        "referer": referer,
        "logs": logs,
        "exception": exception,
        "after": after,
        "reason": f"{plain_name}={secret()}",
        "secrets": secrets,
    }


def _unique(case: dict[str, Any], tag: str) -> dict[str, Any]:
    """``case`` with every secret (and the marker) tagged for this run: the
    storage is shared by all examples, so a value hypothesis draws again while
    shrinking must not be found where an earlier example left it."""
    words = sorted({*case["secrets"], case["marker"]}, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, words)))
    tagged: dict[str, Any] = json.loads(pattern.sub(lambda m: m.group() + tag, json.dumps(case)))
    return tagged


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture
def logged() -> Iterator[None]:
    app_log.setLevel(logging.INFO)
    app_log.propagate = False
    yield
    app_log.propagate = True
    for handler in list(app_log.handlers):
        app_log.removeHandler(handler)


def _drive(leza: Leza, client: TestClient, case: dict[str, Any]) -> None:
    r = client.get(f"/items?{case['query']}", headers={"referer": case["referer"]})
    assert r.status_code == 200
    for line in case["logs"]:
        app_log.info("%s", line)
    try:
        raise ValueError(case["exception"])
    except ValueError:
        app_log.exception("boom")
    leza.audit.record(
        action="update",
        entity_type="thing",
        entity_id="t1",
        before=None,
        after=case["after"],
        reason=case["reason"],
    )


@pytest.mark.both_databases
def test_no_generated_secret_reaches_storage(
    make_leza: Any, storage_url: str, tmp_path: Path, logged: None
) -> None:
    leza = make_leza(record_headers=["referer"], advisories=False, sessions=False)
    app_log.addHandler(leza.logging_handler(rate=1e6, burst=10**6))
    client = TestClient(LezaMiddleware(Starlette(routes=[Route("/items", _ok)]), leza=leza))
    sqlite_db = Path(storage_url.removeprefix("sqlite:///")) if "sqlite" in storage_url else None
    planted: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=cases())
    def example(case: dict[str, Any]) -> None:
        case = _unique(case, f"T{len(planted)}")
        planted.extend(case["secrets"])
        _drive(leza, client, case)
        assert leza.flush(10)
        texts = sql_texts(leza.storage)
        # The event arrived, its look-alike key's value kept as sent.
        assert case["marker"] in texts["leza_access"]
        if sqlite_db is not None:
            texts |= sqlite_raw(sqlite_db)
        assert hits(texts, case["secrets"]) == [], case

    example()
    assert len(set(planted)) > EXAMPLES  # many distinct secrets went through
    assert leza.audit.verify()
    assert len(leza.query.logs(limit=1000)) >= EXAMPLES
    assert hits(sql_texts(leza.storage), planted) == []  # all of them, in every row

    # After shutdown, records go to the spill file, prepared the same way.
    spill = tmp_path / "spill-0"
    leza.shutdown(5)
    last = {
        "query": f"user[password]=ZqSPILL1x&next={encoded('/cb?token=ZqSPILL2x', 2)}&page=1",
        "logs": ["password: ZqSPILL3x", '{"api_key": "ZqSPILL4x"}'],
        "referer": "https://app.example/?sid=ZqSPILL5x",
        "exception": "token=ZqSPILL6x",
        "after": {"a": [{"secret": "ZqSPILL7x"}]},
        "reason": "pin=ZqSPILL8x",
    }
    _drive(leza, client, last)
    leza.recorder.spill.rotate()
    spilled = files_text(spill)
    assert spilled, "nothing was spilled"
    spill_secrets = [f"ZqSPILL{i}x" for i in range(1, 9)]
    assert hits(spilled, [*planted, *spill_secrets]) == []
    assert "user[password]=[Filtered]" in "".join(spilled.values())

    if sqlite_db is not None:  # every page written, folded back into the database file
        conn = sqlite3.connect(sqlite_db)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        assert hits(sqlite_raw(sqlite_db), planted) == []
