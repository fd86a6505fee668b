"""The ``leza`` commands on real SQLite files: tail, export, purge, sessions, revoke,
check, and their errors.

Most run in-process through ``main(argv)``; the paths where the process matters
run as real subprocesses: ``tail -f`` picking up an event another process writes,
then stopping on SIGINT / SIGTERM; ``python -m leza_middleware export`` to a pipe;
``purge`` asking on a real terminal (a pty) and refusing without one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from mmdb_factory import write_city_db
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from test_storage import ALICE, BOT, CHROME, FRANKFURT, T0, ev

from leza_middleware import Leza, LezaMiddleware, Performer
from leza_middleware.cli import build_parser, execute, main
from leza_middleware.cli.common import Context
from leza_middleware.cli.formats import columns_for, flatten
from leza_middleware.events import AuditEvent, Geo, SessionEvent
from leza_middleware.ids import new_event_id
from leza_middleware.performer import Organization
from leza_middleware.storage import MemoryStorage, QueryFilter, SQLStorage
from leza_middleware.storage.migrate import HEAD

SECRET = "cli-tests-secret-key-0123456"
DAY = 86_400_000_000
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36"
)
# Values a CSV writer must quote: commas, quotes, newlines, non-ASCII.
AWKWARD = 'Größe, "quoted"\nsecond line ✓'
ODD_PERFORMER = Performer(
    id="u-ü,1",
    name='O\'Brien, "Bob"\nJr.',
    email="bob@exämple.org",
    organization_unit_labels=("a,b", 'c"d'),
    organizations=(Organization(id="o-1", name="Ünïcode, Inc.", type="customer", labels=("x",)),),
)
LINKOPING = Geo(
    key="89.160.20.0/24", country_code="SE", country_name="Sweden", region_name="Östergötland",
    city="Linköping", zip_code="582 20", latitude=58.4167, longitude=15.6167,
)  # fmt: skip


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'leza.db'}"


@pytest.fixture
def leza(make_leza: Any, url: str) -> Leza:
    """The app's Leza on the file the commands read (its secret key in the env too)."""
    os.environ["LEZA_SECRET_KEY"] = SECRET  # removed again by conftest's _isolated_env
    return make_leza(storage=url, secret_key=SECRET)  # type: ignore[no-any-return]


def access_events() -> list[Any]:
    return [
        ev(1, performer=ALICE, chain=("203.0.113.9", "10.0.0.1")),
        ev(2, device=BOT, geo=None, performer=ODD_PERFORMER, action="login", reason=AWKWARD),
        ev(3, device=None, geo=LINKOPING, endpoint="/söme/päth?q=a,b", client_ip="89.160.20.1"),
        ev(
            4,
            chain=("a,b", "c"),
            performer=ALICE,
            client_ip="161.35.614.165",
            ip_valid=False,
            headers={"accept-language": "de-CH, fr;q=0.8", "x-tenant": 'a"b'},
        ),
        ev(5, ts=T0 + 5000, device=CHROME, geo=FRANKFURT, reason="=cmd|' /C calc'!A0"),
        ev(6, ts=T0 + 5000, action="denied", reason="no\r\nway"),  # same ts as 5: id breaks ties
    ]


@pytest.fixture
def filled(leza: Leza) -> Leza:
    """Access events with awkward values, written straight to the SQLite file, and
    audit rows with awkward before/after through the app's chain."""
    leza.storage.write(access_events())
    leza.audit.record(
        action="update", entity_type="role", entity_id="7,8", actor=ODD_PERFORMER,
        before={"name": AWKWARD, "perms": [1, 2]}, after={"name": "ops", "perms": []},
    )  # fmt: skip
    leza.audit.record(action="create", entity_type="note", entity_id="1", after={"t": "\n"})
    assert leza.flush(5)
    return leza


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def cli_subprocess(*args: str, **kwargs: Any) -> subprocess.Popen[Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kwargs.setdefault("text", True)
    return subprocess.Popen(
        [sys.executable, "-m", "leza_middleware", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **kwargs,
    )  # fmt: skip


# --------------------------------------------------------------------------- export


def parse_cell(cell: str, like: Any) -> Any:
    """A CSV cell read back as the type the record holds (docs/cli.md's rules)."""
    if like is None:
        assert cell == ""
        return None
    if isinstance(like, bool):
        return {"true": True, "false": False}[cell]
    if isinstance(like, int):
        return int(cell)
    if isinstance(like, float):
        return float(cell)
    if isinstance(like, str):
        return cell
    return json.loads(cell)


def field_at(record: dict[str, Any], column: str) -> Any:
    """The value behind a flattened column name; None when a parent object is null
    (or, for ``headers``, when the record has none: the key is left out then)."""
    value: Any = record
    for part in column.split("."):
        if value is None:
            return None
        value = value.get(part) if part == "headers" else value[part]
    return value


def assert_round_trip(rows: list[dict[str, str]], records: list[dict[str, Any]]) -> None:
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        cells = flatten(record)
        for key, cell in cells.items():  # nothing of the record is left out...
            if key not in row:  # ...but a null object, whose columns are all empty
                assert cell == ""
                assert any(c.startswith(f"{key}.") for c in row), key
        for column, cell in row.items():
            assert cell == cells.get(column, ""), column
            original = field_at(record, column)
            assert parse_cell(cell, original) == original, column


@pytest.mark.parametrize("kind", ["access", "audit"])
def test_export_csv_round_trips(
    filled: Leza, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    out = tmp_path / f"{kind}.csv"
    code, _, err = run(["export", "--storage", url, "--kind", kind, "--format", "csv",
                        "-o", str(out), "--page-size", "2"], capsys)  # fmt: skip
    assert code == 0, err
    with out.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == columns_for(kind)
    records = filled.query.page(kind, limit=1000).items
    assert_round_trip(rows, records)
    assert f"{len(records)} {kind} events written to {out}" in err
    if kind == "access":
        by_id = {r["_id"]: r for r in rows}
        odd = by_id["e000002"]
        assert odd["performer.name"] == ODD_PERFORMER.name
        assert odd["reason"] == AWKWARD
        assert json.loads(odd["performer.organizations"])[0]["name"] == "Ünïcode, Inc."
        assert (odd["bot.name"], odd["geoLocationInfoOfIp.city"]) == ("Googlebot", "")
        assert by_id["e000003"]["geoLocationInfoOfIp.city"] == "Linköping"
        assert json.loads(by_id["e000004"]["proxy_chain"]) == ["a,b", "c"]
        assert by_id["e000004"]["ip_valid"] == "false"
        assert json.loads(by_id["e000004"]["headers"]) == {
            "accept-language": "de-CH, fr;q=0.8",
            "x-tenant": 'a"b',
        }
        assert by_id["e000003"]["headers"] == ""  # none recorded
        # The documented column names.
        assert {"timestamp", "endpoint_type", "browser.name", "os.name", "device.type",
                "geoLocationInfoOfIp.country_code", "performer.id", "performer.organizations",
                "machine_identifier"} <= set(reader.fieldnames or ())  # fmt: skip
    else:
        assert json.loads(rows[-1]["before"])["name"] == AWKWARD
        # An actor is stored as access performers are: one line (the line break goes).
        assert rows[-1]["actor.name"] == ODD_PERFORMER.name.replace("\n", "")


@pytest.mark.parametrize("kind", ["access", "audit"])
def test_export_jsonl_round_trips(
    filled: Leza, url: str, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    code, out, _ = run(["export", "--storage", url, "--kind", kind, "--page-size", "4"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert [json.loads(line) for line in lines] == filled.query.page(kind, limit=1000).items
    assert all("\n" not in line for line in lines)


def test_export_filters_and_empty_csv_keeps_its_header(
    filled: Leza, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stamp = "2025-07-06T15:49:24.064Z"  # T0 + 2 ms, inclusive on both ends
    code, out, _ = run(["export", "--storage", url, "--kind", "access",
                        "--since", stamp, "--until", stamp], capsys)  # fmt: skip
    assert [json.loads(line)["_id"] for line in out.splitlines()] == ["e000002"]
    code, out, _ = run(["export", "--storage", url, "--kind", "access",
                        "--until", "2025-07-06", "--action", "denied"], capsys)  # fmt: skip
    assert [json.loads(line)["_id"] for line in out.splitlines()] == ["e000006"]
    code, out, _ = run(["export", "--storage", url, "--kind", "access", "--format", "csv",
                        "--since", "2030-01-01"], capsys)  # fmt: skip
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [columns_for("access")]


def test_export_spreadsheet_safe_defuses_formulas(
    filled: Leza, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(["export", "--storage", url, "--kind", "access", "--format", "csv",
                     "--spreadsheet-safe"], capsys)  # fmt: skip
    row = next(r for r in csv.DictReader(io.StringIO(out)) if r["_id"] == "e000005")
    assert row["reason"] == "'=cmd|' /C calc'!A0"


def test_export_through_python_m_to_a_pipe(filled: Leza, url: str) -> None:
    proc = cli_subprocess("export", "--storage", url, "--kind", "access", "--format", "csv",
                          "--progress", text=False)  # fmt: skip
    raw, raw_err = proc.communicate(timeout=60)
    err = raw_err.decode()
    assert proc.returncode == 0, err
    # Bytes decoded by hand: a text pipe would turn the \r\n inside a value into \n.
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert_round_trip(rows, filled.query.access(limit=1000))
    assert "export access: 6 rows" in err  # --progress: shown although stderr is a pipe


def test_export_sessions_from_a_real_app(
    app_sessions: list[str], url: str, leza: Leza, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["export", "--storage", url, "--kind", "session", "--format", "csv"],
                       capsys)  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert_round_trip(rows, leza.query.page("session", limit=100).items)
    assert {r["performer.id"] for r in rows} == {"alice", "bob"}


# --------------------------------------------------------------------------- tail


def test_tail_prints_the_newest_oldest_first(
    filled: Leza, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["tail", "--storage", url, "-n", "3", "--format", "jsonl"], capsys)
    assert code == 0
    newest = filled.query.access(limit=3)
    assert [json.loads(line) for line in out.splitlines()] == list(reversed(newest))
    code, out, _ = run(["tail", "--storage", url, "-n", "2"], capsys)
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("2025-07-06T15:49:24.067000Z  denied  GET  /api/items/6")
    assert "no??way" in lines[1]  # control characters never reach the terminal
    code, out, _ = run(["tail", "--storage", url, "--kind", "audit", "-n", "1"], capsys)
    assert "create  note:1" in out


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_storage import ev
    from leza_middleware.storage import SQLStorage
    storage = SQLStorage(sys.argv[1])
    storage.write([ev(int(sys.argv[3]), ts=int(sys.argv[4]))])
    storage.close()
    """
)


class Lines:
    """Lines of a subprocess's stdout as they come (select + os.read: a buffered
    reader would hide lines it has already read ahead from select)."""

    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], max(deadline - time.monotonic(), 0))
            assert ready, "no output in time"
            chunk = os.read(self.fd, 65536)
            assert chunk, "the process closed its output"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


@pytest.mark.slow
def test_tail_follow_picks_up_another_process_and_stops_cleanly(
    filled: Leza, url: str, tmp_path: Path
) -> None:
    args = ("tail", "-f", "--storage", url, "-n", "1", "--format", "jsonl", "--interval", "0.1")
    followers = [cli_subprocess(*args, text=False), cli_subprocess(*args, text=False)]
    try:
        lines = [Lines(proc) for proc in followers]
        for follower in lines:  # the newest event first: the follower is running
            assert json.loads(follower.next())["_id"] == "e000006"
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        now = time.time_ns() // 1000
        # Another process writes an event; then one stamped 2 s earlier (a slower
        # worker's recorder writes it later): the followers show both, once.
        for n, ts in ((900, now), (901, now - 2_000_000)):
            writer = [sys.executable, str(script), url, str(Path(__file__).parent), str(n)]
            subprocess.run([*writer, str(ts)], check=True, timeout=60)
            for follower in lines:
                assert json.loads(follower.next())["_id"] == f"e000{n}"
        followers[0].send_signal(signal.SIGINT)
        followers[1].send_signal(signal.SIGTERM)
        for proc, follower in zip(followers, lines, strict=True):
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
            assert err == b""
            assert follower.buffer + out == b""  # nothing printed twice
    finally:
        for proc in followers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- purge


def aged(leza: Leza) -> None:
    now = time.time_ns() // 1000
    leza.storage.write(
        [ev(n, ts=now - (100 if n < 23 else 10) * DAY - n) for n in range(30)]  # 23 old
    )


def test_purge_deletes_only_older_rows(
    leza: Leza, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    aged(leza)
    code, out, err = run(["purge", "--storage", url, "--kind", "access", "--older-than", "90d",
                          "--yes", "--batch-size", "5", "--progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert out.startswith("deleted 23 access events before ")
    assert "purge access: 23 rows" in err
    left = leza.storage.query("access", QueryFilter(limit=100)).events
    assert sorted(int(e.id[1:]) for e in left) == list(range(23, 30))
    code, out, _ = run(["purge", "--storage", url, "--kind", "access", "--older-than", "2w",
                        "-y"], capsys)  # fmt: skip
    assert out.startswith("deleted 0 access events")


def test_purge_refuses_without_yes_when_nobody_can_answer(
    leza: Leza, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    aged(leza)
    code, _, err = run(["purge", "--storage", url, "--kind", "access", "--older-than", "90d"],
                       capsys)  # fmt: skip
    assert code == 2
    assert err == ("leza purge: refusing to delete without --yes: stdin is not a terminal, "
                   "nobody can confirm\n")  # fmt: skip
    assert len(leza.storage.query("access", QueryFilter(limit=100)).events) == 30


@pytest.mark.parametrize(("answer", "left"), [("y", 7), ("\n", 30)])
def test_purge_asks_on_a_terminal(leza: Leza, url: str, answer: str, left: int) -> None:
    aged(leza)
    leader, follower = pty.openpty()
    try:
        proc = cli_subprocess("purge", "--storage", url, "--kind", "access",
                              "--older-than", "90d", stdin=follower)  # fmt: skip
        os.close(follower)
        deadline = time.monotonic() + 30
        while proc.stderr is not None and time.monotonic() < deadline:
            # The question goes to stderr; the answer comes from the terminal.
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                break
        os.write(leader, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(leader)
    assert "[y/N]" in err
    assert proc.returncode == (0 if left == 7 else 1), err
    assert out.startswith("deleted 23 access events") if left == 7 else out == ""
    assert len(leza.storage.query("access", QueryFilter(limit=100)).events) == left


def test_purge_audit_keeps_the_chain_verifiable(
    leza: Leza, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time_ns() // 1000
    for n, ts in enumerate([now - 100 * DAY, now - 99 * DAY, now - 98 * DAY, now]):
        leza.record(AuditEvent(id=new_event_id(ts), ts=ts, action="update", entity_type="role",
                               entity_id="1", after={"n": n}))  # fmt: skip
    assert leza.flush(5)
    code, out, err = run(["purge", "--storage", url, "--kind", "audit", "--older-than", "90d",
                          "--yes"], capsys)  # fmt: skip
    assert (code, out[:30]) == (0, "deleted 3 audit events before "), err
    code, out, _ = run(["verify", "--storage", url], capsys)
    assert code == 0
    assert out == "OK: 1 rows in 1 chains verified (3 older rows of 1 chains purged, signed " \
        "purge markers)\n"  # fmt: skip
    # Without the key no marker can be signed: refused, nothing deleted.
    os.environ.pop("LEZA_SECRET_KEY")
    code, _, err = run(["purge", "--storage", url, "--kind", "audit", "--older-than", "1s",
                        "--yes"], capsys)  # fmt: skip
    assert code == 2
    assert "needs the secret key" in err


def test_purge_sessions_removes_ended_ones(
    leza: Leza, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old = time.time_ns() // 1000 - 100 * DAY
    leza.storage.write([
        SessionEvent(id=new_event_id(old), ts=old, action="session_start", session_id="s1"),
        SessionEvent(id=new_event_id(old + 1), ts=old + 1, action="session_end",
                     session_id="s1", end_reason="logout"),
        SessionEvent(id=new_event_id(old), ts=old, action="session_start", session_id="s2"),
    ])  # fmt: skip
    code, out, _ = run(["purge", "--storage", url, "--kind", "session", "--older-than", "90d",
                        "--yes"], capsys)  # fmt: skip
    assert code == 0
    assert out.startswith("deleted 1 sessions that ended before ")
    assert [s["_id"] for s in leza.sessions.find()] == ["s2"]


# --------------------------------------------------------------------------- sessions


class CookieUser(AuthenticationBackend):
    async def authenticate(self, conn: Any) -> Any:
        name = conn.cookies.get("user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


@pytest.fixture
def app_leza(make_leza: Any, url: str) -> Leza:
    os.environ["LEZA_SECRET_KEY"] = SECRET
    return make_leza(storage=url, secret_key=SECRET, session_poll_interval=0.05,  # type: ignore[no-any-return]
                     trusted_proxies=["127.0.0.1"])  # fmt: skip


@pytest.fixture
def app_client(app_leza: Leza) -> Iterator[Any]:
    """A browser factory on a Starlette app that signs users in with a cookie."""

    async def login(request: Request) -> PlainTextResponse:
        name = request.path_params["name"]
        app_leza.sessions.login(Performer(id=name, name=name.title()))
        response = PlainTextResponse("hi")
        response.set_cookie("user", name)
        return response

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("page")

    app = Starlette(
        routes=[Route("/login/{name}", login, methods=["POST"]), Route("/page", page)],
        middleware=[
            Middleware(LezaMiddleware, leza=app_leza),
            Middleware(AuthenticationMiddleware, backend=CookieUser()),
        ],
    )
    clients: list[TestClient] = []

    def browser() -> TestClient:
        client = TestClient(app, client=("127.0.0.1", 5000))
        client.headers.update({"user-agent": CHROME_UA, "x-forwarded-for": "161.35.214.167",
                               "accept": "text/html"})  # fmt: skip
        clients.append(client)
        return client

    yield browser
    for client in clients:
        client.close()


@pytest.fixture
def app_sessions(app_leza: Leza, app_client: Any) -> list[str]:
    """Sessions of alice (two browsers) and bob, as the app recorded them."""
    for name in ("alice", "alice", "bob"):
        client = app_client()
        assert client.post(f"/login/{name}").status_code == 200
        assert client.get("/page").status_code == 200
    assert app_leza.flush(5)
    return [s["_id"] for s in app_leza.sessions.active()]


def test_sessions_lists_what_the_app_recorded(
    app_sessions: list[str], app_leza: Leza, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["sessions", "--storage", url, "--format", "jsonl"], capsys)
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == app_leza.sessions.find()
    _, out, _ = run(["sessions", "--storage", url, "--active", "--user", "alice"], capsys)
    lines = out.splitlines()
    assert len(lines) == 2
    assert all("  alice  active  161.35.214.167  " in line for line in lines)
    assert all("Chrome / Windows / desktop" in line for line in lines)
    _, out, err = run(["sessions", "--storage", url, "--user", "nobody"], capsys)
    assert (out, err) == ("", "no sessions of nobody\n")


def test_revoke_ends_the_session_in_the_running_app(
    app_sessions: list[str], app_leza: Leza, app_client: Any, url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    client = app_client()
    client.post("/login/carol")
    assert client.get("/page").status_code == 200
    assert app_leza.flush(5)
    sid = app_leza.sessions.find(performer_id="carol")[0]["_id"]
    code, out, _ = run(["revoke", "--storage", url, sid], capsys)
    assert (code, out) == (0, f"revoked session {sid}\n")
    # The app learns it from storage (another Leza wrote it) and refuses the session.
    assert wait_for(lambda: client.get("/page").status_code == 401, timeout=5)
    audit = app_leza.query.audit(entity_type="session")
    assert [(a["action"], a["entity_id"], a["actor"]["id"][:4]) for a in audit] == [
        ("revoke", sid, "cli:")
    ]
    assert app_leza.audit.verify()

    code, _, err = run(["revoke", "--storage", url, sid], capsys)
    assert code == 1
    assert err.startswith(f"leza revoke: session {sid} already ended at ")
    assert err.endswith(" (revoked)\n")
    code, _, err = run(["revoke", "--storage", url, "no-such-session"], capsys)
    assert (code, err) == (1, "leza revoke: no session 'no-such-session' (the _id column of "
                              "`leza sessions`)\n")  # fmt: skip
    code, out, _ = run(["revoke", "--storage", url, "--user", "alice"], capsys)
    assert (code, out) == (0, "revoked 2 active sessions of alice\n")
    assert [s["performer"]["id"] for s in app_leza.sessions.active()] == ["bob"]


# --------------------------------------------------------------------------- check


def check_lines(out: str) -> dict[str, tuple[str, str]]:
    lines = {}
    for line in out.splitlines()[:-1]:
        status, name, message = line.split(maxsplit=2)
        lines[name] = (status, message)
    return lines


def test_check_reports_each_part(
    filled: Leza, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    fresh = write_city_db(tmp_path / "fresh.mmdb")
    monkeypatch.setenv("LEZA_GEOIP_DB", str(fresh))
    code, out, _ = run(["check", "--storage", url], capsys)
    assert code == 0, out
    checks = check_lines(out)
    assert [s for s, _ in checks.values()] == ["OK", "OK", "OK", "OK", "OK"]
    assert "schema present" in checks["storage"][1]
    assert checks["schema"][1] == f"at {HEAD} (head)"
    assert checks["geoip"][1].startswith(f"GeoLite2-City {fresh}, built ")
    assert out.splitlines()[-1] == "0 failed, 0 warnings"

    old = write_city_db(tmp_path / "old.mmdb", build_epoch=int(time.time()) - 90 * 86_400)
    monkeypatch.setenv("LEZA_GEOIP_DB", str(old))
    monkeypatch.delenv("LEZA_SECRET_KEY")
    code, out, _ = run(["check", "--storage", url], capsys)
    assert code == 0  # warnings only
    checks = check_lines(out)
    assert checks["geoip"][0] == "WARN"
    assert "90 days old (over 60)" in checks["geoip"][1]
    assert checks["secret"][0] == "WARN"
    assert out.splitlines()[-1] == "0 failed, 2 warnings"


def test_check_fails_on_a_missing_database_or_geoip_file(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEZA_GEOIP_DB", str(tmp_path / "missing.mmdb"))
    code, out, _ = run(["check", "--storage", url], capsys)
    assert code == 1
    checks = check_lines(out)
    assert checks["storage"][0] == "FAIL"
    assert "no database at" in checks["storage"][1]
    assert checks["geoip"] == ("FAIL", f"GeoIP database '{tmp_path / 'missing.mmdb'}': file "
                                       "not found")  # fmt: skip
    SQLStorage(url).setup()  # tables exist now
    monkeypatch.setenv("LEZA_GEOIP_DB", "off")
    monkeypatch.setenv("LEZA_BATCH_SIZE", "lots")
    code, out, _ = run(["check", "--storage", url], capsys)
    assert code == 1
    assert out.splitlines()[0].startswith("FAIL  config   batch_size (from $LEZA_BATCH_SIZE)")
    monkeypatch.delenv("LEZA_BATCH_SIZE")
    code, out, _ = run(["check", "--storage", url], capsys)
    assert code == 0
    assert check_lines(out)["geoip"][0] == "OK"


def test_check_reaches_postgresql(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    storage = SQLStorage(postgres_url)
    storage.setup()
    storage.close()
    code, out, _ = run(["check", "--storage", postgres_url], capsys)
    assert code == 0, out
    status, message = check_lines(out)["storage"]
    assert (status, "schema present" in message) == ("OK", True), out
    assert check_lines(out)["schema"] == ("OK", f"at {HEAD} (head)")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tail", "--storage", "redis://x/0"], "leza: unknown storage URL scheme 'redis'"),
        (["tail", "--storage", "sqlite:///MISSING"], "leza tail: no database at "),
        (["export", "--kind", "access", "--storage", "URL", "--page-size", "0"],
         "leza export: --page-size must be 1..10000"),
    ],
)  # fmt: skip
def test_runtime_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SQLStorage(url).setup()
    argv = [a.replace("URL", url).replace("MISSING", str(tmp_path / "nope.db")) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1


class NoLogs(MemoryStorage):
    """A backend (like a user's own) without a place for log and advisory events."""

    def stores(self, kind: str) -> bool:
        return kind not in ("log", "advisory")

    def describe(self) -> str:
        return "NoLogs()"


@pytest.mark.parametrize(
    "argv",
    [["tail", "--kind", "log"], ["export", "--kind", "advisory"],
     ["purge", "--kind", "log", "--older-than", "1d", "-y"]],
)  # fmt: skip
def test_a_kind_the_storage_keeps_nowhere_is_one_line_and_exit_2(
    argv: list[str], make_leza: Any
) -> None:
    out, err = io.StringIO(), io.StringIO()
    leza = make_leza(storage=NoLogs())
    ctx = Context(prog="leza", make_leza=lambda: leza, options={}, stdout=out, stderr=err)
    code = execute(argv[0], ctx, build_parser().parse_args(argv))
    assert (code, out.getvalue()) == (2, "")
    kind = argv[2]
    assert (
        err.getvalue()
        == f"leza {argv[0]}: NoLogs() keeps no {kind} events (no table for that kind)\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["purge", "--kind", "access", "--older-than", "90x"], "invalid duration '90x'"),
        (["purge", "--kind", "access", "--older-than", "0d"], "must be more than 0"),
        (["tail", "--kind", "bogus"], "argument --kind: invalid choice: 'bogus'"),
        (["export", "--kind", "access", "--since", "yesterday"], "invalid time 'yesterday'"),
        (["revoke"], "one of the arguments SESSION_ID --user is required"),
    ],
)
def test_argument_errors_exit_2_argparse_style(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1]
    assert "Traceback" not in err


def test_storage_before_the_command_and_from_the_environment(
    filled: Leza, url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(["--storage", url, "tail", "-n", "1"], capsys)[1].count("\n") == 1
    monkeypatch.setenv("LEZA_STORAGE", url)
    assert run(["tail", "-n", "1"], capsys)[1].count("\n") == 1


def test_log_advisory_and_check_kinds_export_and_tail(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from leza_middleware.events import AdvisoryEvent, CheckEvent, LogEvent

    storage = SQLStorage(url)
    storage.setup()
    for kind in ("log", "advisory", "check"):  # empty: the CSV header alone
        code, out, _ = run(["export", "--storage", url, "--kind", kind, "--format", "csv"], capsys)
        assert code == 0
        assert list(csv.reader(io.StringIO(out))) == [columns_for(kind)]
    storage.write([
        LogEvent(id="l1", ts=T0, level=40, logger="app", message=AWKWARD, request_id="r1"),
        AdvisoryEvent(id="a1", ts=T0 + 1, rule="burst", severity="high", message="10 failures",
                      evidence=["e1", "e2"], performer_id="alice", details={"count": 10}),
        CheckEvent(id="c1", ts=T0 + 2, check="billing", ok=False, state="down",
                   previous="up", latency_ms=5.0, error="HTTP 503"),
    ])  # fmt: skip
    storage.close()
    for kind, key, value in (("log", "message", AWKWARD), ("advisory", "severity", "high"),
                             ("check", "error", "HTTP 503")):  # fmt: skip
        code, out, _ = run(["export", "--storage", url, "--kind", kind, "--format", "csv"], capsys)
        header, row = list(csv.reader(io.StringIO(out)))
        assert header == columns_for(kind)
        assert dict(zip(header, row, strict=True))[key] == value
    code, out, _ = run(["tail", "--storage", url, "--kind", "check"], capsys)
    assert code == 0
    assert "billing  down  failed  5.0  HTTP 503" in out


def test_check_and_migrate_reach_every_store_of_storage_by_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    main_url, access_url = f"sqlite:///{tmp_path / 'main.db'}", f"sqlite:///{tmp_path / 'a.db'}"
    monkeypatch.setenv("LEZA_STORAGE", main_url)
    monkeypatch.setenv("LEZA_STORAGE_ACCESS", access_url)
    monkeypatch.setenv("LEZA_GEOIP_DB", "off")
    code, out, _ = run(["migrate"], capsys)
    assert code == 0, out
    assert f"{tmp_path / 'main.db'}: migrated" in out
    assert f"{tmp_path / 'a.db'}: migrated" in out
    code, out, _ = run(["check"], capsys)
    assert code == 0, out
    storage_lines = [line for line in out.splitlines() if line.split()[1:2] == ["storage"]]
    schema_lines = [line for line in out.splitlines() if line.split()[1:2] == ["schema"]]
    assert len(storage_lines) == 2
    assert len(schema_lines) == 2
    assert all(line.startswith("OK") for line in storage_lines + schema_lines), out
