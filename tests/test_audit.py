"""The audit log: the explicit API, history, and the tamper-evident chain."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from leza_middleware import Leza, LezaMiddleware, Performer
from leza_middleware.cli import main as cli

# The same behaviour on both SQL backends (tests/conftest.py: storage_url).
pytestmark = pytest.mark.both_databases

SECRET = "audit-tests-secret-key-0123"


@pytest.fixture
def leza(make_leza: Any, tmp_path: Path) -> Leza:
    return make_leza(storage=f"sqlite:///{tmp_path / 'audit.db'}", secret_key=SECRET)  # type: ignore[no-any-return]


def write_changes(leza: Leza, n: int = 6) -> None:
    for i in range(n):
        leza.audit.record(
            action="update",
            entity_type="role",
            entity_id="42",
            before={"perms": list(range(i))},
            after={"perms": list(range(i + 1))},
            actor={"id": f"admin-{i % 2}"},
        )
    assert leza.flush(5)


def db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "audit.db")


# --------------------------------------------------------------------------- the API


def test_record_history_and_diff(leza: Leza) -> None:
    leza.audit.record(
        action="create",
        entity_type="role",
        entity_id=7,
        after={"name": "ops", "password": "hunter2"},
        actor={"id": "root"},
    )
    leza.audit.record(
        action="update",
        entity_type="role",
        entity_id=7,
        before={"name": "ops", "password": "hunter2"},
        after={"name": "ops-team", "password": "swordfish"},
        actor=Performer(id="alice"),
        reason="renamed on request",
    )
    leza.audit.record(
        action="delete",
        entity_type="role",
        entity_id=7,
        before={"name": "ops-team"},
        actor={"id": "root"},
    )
    leza.audit.record(action="create", entity_type="user", entity_id=1, after={"n": 1})
    assert leza.flush(5)
    created, updated, deleted = leza.audit.history("role", 7)  # oldest first
    assert created["after"] == {"name": "ops", "password": "[Filtered]"}
    # a changed secret is listed as changed, its values never stored
    assert updated["diff"] == {
        "name": {"before": "ops", "after": "ops-team"},
        "password": {"before": "[Filtered]", "after": "[Filtered]"},
    }
    assert "hunter2" not in json.dumps(updated)
    assert "swordfish" not in json.dumps(updated)
    assert updated["actor"]["id"] == "alice"
    assert updated["reason"] == "renamed on request"
    assert deleted["action"] == "delete"
    assert deleted["after"] is None
    # across entity types, newest first, with filters
    assert [e["entity_type"] for e in leza.query.audit()] == ["user", "role", "role", "role"]
    assert len(leza.query.audit(entity_type="role", action="update")) == 1
    assert [e["action"] for e in leza.query.audit(actor_id="root")] == ["delete", "create"]
    assert leza.audit.verify()


def test_undecodable_text_is_stored_with_a_replacement_character(
    make_leza: Any, storage_url: str
) -> None:
    # A file name read with surrogateescape holds lone surrogates, which no
    # database or spill file can encode: the record is kept, with U+FFFD there.
    # Names and ids lose control characters; the states keep them (as JSON escapes).
    leza = make_leza(storage=storage_url, secret_key=SECRET)
    leza.audit.record(
        action="rename",
        entity_type="file",
        entity_id="report-\udcff\x00.pdf",  # and a NUL, which PostgreSQL refuses in text
        before={"name": "report-\udcff.pdf", "tags\udcfe": ["a\udcff"]},
        after={"name": "report.pdf", "blob": "a\x00b"},
        reason="cleanup \udcff\x00\nsecond line",
        actor={"id": "ops\x00", "name": "Ops\r\nTeam"},
    )
    assert leza.flush(5)
    s = leza.stats()
    assert (s["written"], s["dropped"]) == (1, 0)
    (event,) = leza.query.audit(entity_type="file")
    assert event["entity_id"] == "report-\ufffd.pdf"
    assert event["before"] == {"name": "report-\ufffd.pdf", "tags\ufffd": ["a\ufffd"]}
    assert event["diff"]["name"] == {"before": "report-\ufffd.pdf", "after": "report.pdf"}
    assert event["after"]["blob"] == "a\x00b"  # other text exactly as given
    assert event["reason"] == "cleanup \ufffd\nsecond line"
    assert (event["actor"]["id"], event["actor"]["name"]) == ("ops\ufffd", "OpsTeam")
    assert leza.query.audit(actor_id="ops\ufffd") == [event]
    assert leza.audit.verify()


def test_undecodable_text_survives_the_spill_file(make_leza: Any, flaky_storage: Any) -> None:
    flaky_storage.down = True
    leza = make_leza(storage=flaky_storage, secret_key=SECRET, max_retries=0)
    leza.audit.record(
        action="update", entity_type="file", entity_id="\udcff", after={"n": "\udcff"}
    )
    assert leza.flush(5)
    s = leza.stats()
    assert (s["spilled"], s["dropped"]) == (1, 0)


def test_actor_request_id_and_ip_come_from_the_request(make_leza: Any) -> None:
    leza = make_leza(
        performer=lambda request: Performer(id=request.headers["x-user"]),
        trusted_proxies=["127.0.0.1"],
    )

    async def change(request: Request) -> PlainTextResponse:
        leza.audit.record(
            action="update",
            entity_type="setting",
            entity_id="theme",
            before={"v": "light"},
            after={"v": "dark"},
        )
        return PlainTextResponse("ok")

    app = LezaMiddleware(Starlette(routes=[Route("/change", change, methods=["POST"])]), leza=leza)
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        r = client.post("/change", headers={"x-user": "carol", "x-forwarded-for": "81.2.69.142"})
    assert leza.flush(5)
    [event] = leza.query.audit()
    assert event["actor"]["id"] == "carol"
    assert event["request_id"] == r.headers["x-request-id"]
    assert event["ip"] == "81.2.69.142"
    # outside a request there is no actor unless given
    leza.audit.record(action="noop", entity_type="x", entity_id=1)
    assert leza.flush(5)
    assert leza.query.audit(entity_type="x")[0]["actor"] is None


@pytest.mark.parametrize("storage", ["memory://", "jsonl"])
def test_other_storages_keep_and_verify_the_chain(
    make_leza: Any, tmp_path: Path, storage: str
) -> None:
    url = f"jsonl://{tmp_path / 'j'}" if storage == "jsonl" else storage
    leza = make_leza(storage=url, secret_key=SECRET)
    write_changes(leza, 4)
    assert [e["seq"] for e in leza.audit.history("role", 42)] == [1, 2, 3, 4]
    assert leza.audit.verify()
    assert leza.audit.checkpoints()[0]["seq"] == 4


# --------------------------------------------------------------------------- tampering


def test_untouched_log_verifies(leza: Leza) -> None:
    write_changes(leza)
    result = leza.audit.verify()
    assert result
    assert result.ok
    assert result.rows == 6


def test_edited_row_is_detected(leza: Leza, tmp_path: Path) -> None:
    write_changes(leza)
    with db(tmp_path) as con:
        con.execute(
            "update leza_audit set actor_id = 'someone-else', "
            'actor = \'{"id":"someone-else"}\' where seq = 3'
        )
    result = leza.audit.verify()
    assert not result
    assert (result.problem, result.seq) == ("edited", 3)
    assert "edited" in result.reason


def test_deleted_row_is_detected(leza: Leza, tmp_path: Path) -> None:
    write_changes(leza)
    with db(tmp_path) as con:
        con.execute("delete from leza_audit where seq = 4")
    result = leza.audit.verify()
    assert (result.ok, result.problem, result.seq) == (False, "deleted", 4)


def test_reordered_rows_are_detected(leza: Leza, tmp_path: Path) -> None:
    write_changes(leza)
    with db(tmp_path) as con:  # swap the sequence numbers of two rows
        con.execute("update leza_audit set seq = -2 where seq = 2")
        con.execute("update leza_audit set seq = 2 where seq = 5")
        con.execute("update leza_audit set seq = 5 where seq = -2")
    result = leza.audit.verify()
    assert not result.ok
    assert result.problem in ("reordered", "edited")
    assert result.seq == 2


def test_truncated_tail_is_detected_against_the_checkpoint(leza: Leza, tmp_path: Path) -> None:
    write_changes(leza)
    with db(tmp_path) as con:
        con.execute("delete from leza_audit where seq >= 5")
    result = leza.audit.verify()
    assert (result.ok, result.problem, result.seq) == (False, "truncated", 5)


def test_exported_checkpoints_catch_a_cut_that_also_rolls_back_the_stored_one(
    leza: Leza, tmp_path: Path
) -> None:
    write_changes(leza)
    exported = leza.audit.checkpoints()
    with db(tmp_path) as con:
        last = con.execute("select hash from leza_audit where seq = 4").fetchone()[0]
        con.execute("delete from leza_audit where seq >= 5")
        con.execute("update leza_audit_checkpoint set seq = 4, hash = ?", (last,))
    assert leza.audit.verify()  # consistent on its own...
    result = leza.audit.verify(exported)  # ...but not with the copy kept elsewhere
    assert (result.ok, result.problem) == (False, "truncated")


def test_leza_verify_command(
    leza: Leza, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_changes(leza)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("LEZA_SECRET_KEY", SECRET)
    monkeypatch.setenv("LEZA_SPILL_DIR", str(tmp_path / "cli-spill"))
    keep = tmp_path / "checkpoints.json"
    assert cli(["verify", "--storage", url, "--export-checkpoints", str(keep)]) == 0
    assert "OK: 6 rows in 1 chains" in capsys.readouterr().out
    with db(tmp_path) as con:
        con.execute("update leza_audit set diff = '{}' where seq = 2")
    assert cli(["verify", "--storage", url, "--checkpoints", str(keep)]) == 1
    assert "BROKEN: chain" in capsys.readouterr().out
    monkeypatch.delenv("LEZA_SECRET_KEY")
    assert cli(["verify", "--storage", url]) == 2


# --------------------------------------------------------------------------- processes

WRITER = textwrap.dedent(
    """
    import sys
    from leza_middleware import Leza
    leza = Leza(storage=sys.argv[1], geoip_db=False, secret_key=sys.argv[2],
                spill_dir=sys.argv[3], batch_size=7)
    for i in range(60):
        leza.audit.record(action="update", entity_type="counter", entity_id=sys.argv[4],
                          before={"n": i}, after={"n": i + 1}, actor={"id": "w" + sys.argv[4]})
    assert leza.flush(30)
    """
)


@pytest.mark.slow
def test_four_processes_writing_at_once_still_verify(leza: Leza, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    leza.storage.setup()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, SECRET, str(tmp_path / f"s{i}"), str(i)],
            env={**os.environ},
        )
        for i in range(4)
    ]
    for proc in procs:
        assert proc.wait(60) == 0
    result = leza.audit.verify()
    assert result, result.reason
    assert (result.chains, result.rows) == (4, 240)
    assert [e["after"]["n"] for e in leza.audit.history("counter", 2)] == list(range(1, 61))
