"""``manage.py leza_*``: the ``leza`` commands against the Django project's Leza.

Run in-process through ``django.core.management.call_command`` on the test
project (tests/djangoproject) with ``settings.LEZA`` pointing at a SQLite file,
and once as a real ``django-admin`` subprocess for exit codes and the
``CommandError`` line. The secret key is the one Django derives from
``SECRET_KEY`` (no ``LEZA_SECRET_KEY``), so ``leza_verify`` works as it does in
a deployed project.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings
from test_cli import AWKWARD, ODD_PERFORMER, access_events, assert_round_trip, check_lines
from test_storage import ALICE, ev

from leza_middleware import Leza
from leza_middleware.cli import COMMANDS
from leza_middleware.cli.formats import columns_for
from leza_middleware.django import get_leza
from leza_middleware.events import AuditEvent, SessionEvent
from leza_middleware.ids import new_event_id
from leza_middleware.storage import QueryFilter

TESTS = Path(__file__).resolve().parent
DAY = 86_400_000_000
WRAPPED = ("tail", "export", "purge", "sessions", "revoke", "verify", "check", "migrate", "forget")


@pytest.fixture(scope="module", autouse=True)
def _django() -> None:
    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()


@pytest.fixture
def leza_conf(tmp_path: Path) -> dict[str, Any]:
    return {
        "storage": f"sqlite:///{tmp_path / 'leza.db'}",
        "geoip_db": False,
        "spill_dir": str(tmp_path / "spill"),
        "flush_interval": 0.05,
        "app_name": "djangoproject",
    }


@pytest.fixture
def leza(leza_conf: dict[str, Any]) -> Iterator[Leza]:
    """settings.LEZA for one test, and the project's Leza the commands use."""
    with override_settings(LEZA=leza_conf):
        instance = get_leza()
        instance.query.ensure_ready()  # the file exists, as after the app's first write
        yield instance
    instance.shutdown(timeout=2)


def manage(name: str, *args: Any, **options: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(f"leza_{name}", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def test_every_cli_command_has_a_management_command() -> None:
    from django.core.management import get_commands, load_command_class

    commands = get_commands()
    for name in WRAPPED:
        assert commands[f"leza_{name}"] == "leza_middleware.django"
        command = load_command_class("leza_middleware.django", f"leza_{name}")
        assert command.help == COMMANDS[name].help
        parser = command.create_parser("manage.py", f"leza_{name}")
        assert "--storage" not in parser.format_help()  # the project's storage, always


def test_tail_and_export_read_the_projects_storage(leza: Leza, tmp_path: Path) -> None:
    leza.storage.write(access_events())
    out, _ = manage("tail", lines=2, format="jsonl")
    assert [json.loads(line) for line in out.splitlines()] == list(
        reversed(leza.query.access(limit=2))
    )
    target = tmp_path / "access.csv"
    _, err = manage("export", kind="access", format="csv", output=str(target), page_size=4)
    assert err == f"6 access events written to {target}\n"
    with target.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert_round_trip(rows, leza.query.access(limit=100))
    odd = next(r for r in rows if r["_id"] == "e000002")
    assert (odd["performer.name"], odd["reason"]) == (ODD_PERFORMER.name, AWKWARD)

    # To stdout: whole CSV lines, no newline added by Django's OutputWrapper.
    out, _ = manage("export", kind="access", format="csv", since="2025-07-06T15:49:24.065Z")
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert [r["_id"] for r in rows] == ["e000006", "e000005", "e000004", "e000003"]
    out, _ = manage("export", kind="access", format="jsonl", until="2025-07-06", action="denied")
    assert [json.loads(line)["_id"] for line in out.splitlines()] == ["e000006"]


def test_options_given_to_call_command_are_typed_and_checked(leza: Leza) -> None:
    with pytest.raises(CommandError, match=r"argument --since: invalid time 'soon'") as info:
        manage("export", kind="access", since="soon")
    assert info.value.returncode == 2
    with pytest.raises(CommandError, match=r"argument --kind: invalid choice: 'bogus'"):
        manage("export", kind="bogus")
    with pytest.raises(CommandError, match=r"invalid duration '3 months'"):
        manage("purge", kind="access", older_than="3 months", yes=True)


def test_purge_with_yes_and_refusal_without(leza: Leza) -> None:
    now = time.time_ns() // 1000
    leza.storage.write([ev(n, ts=now - (100 if n < 4 else 1) * DAY) for n in range(6)])
    with pytest.raises(CommandError, match="refusing to delete without --yes") as info:
        manage("purge", kind="access", older_than="90d")
    assert info.value.returncode == 2
    assert len(leza.storage.query("access", QueryFilter(limit=10)).events) == 6
    out, _ = manage("purge", kind="access", older_than="90d", yes=True, batch_size="3")
    assert out.startswith("deleted 4 access events before ")
    assert sorted(e.id for e in leza.storage.query("access", QueryFilter(limit=10)).events) == [
        "e000004",
        "e000005",
    ]


def test_sessions_and_revoke(leza: Leza) -> None:
    now = time.time_ns() // 1000
    leza.storage.write([
        SessionEvent(id=new_event_id(now - n), ts=now - n, action="session_start",
                     session_id=f"sess-{n:04d}", performer=ALICE, ip="161.35.214.167")
        for n in (1, 2)
    ])  # fmt: skip
    out, _ = manage("sessions", active=True, user=ALICE.id, format="jsonl")
    assert [json.loads(line)["_id"] for line in out.splitlines()] == ["sess-0001", "sess-0002"]
    out, _ = manage("revoke", "sess-0001")
    assert out == "revoked session sess-0001\n"
    assert [s["_id"] for s in leza.sessions.active()] == ["sess-0002"]
    with pytest.raises(CommandError, match=r"already ended at .* \(revoked\)") as info:
        manage("revoke", "sess-0001")
    assert info.value.returncode == 1
    out, _ = manage("revoke", user=ALICE.id)
    assert out == f"revoked 1 active session of {ALICE.id}\n"
    # Audited under the project's key (derived from Django's SECRET_KEY): it verifies.
    assert leza.flush(5)
    audit = leza.query.audit(entity_type="session")
    assert [(a["action"], a["actor"]["name"].split(" (")[0]) for a in audit] == [
        ("revoke", "manage.py leza_revoke")
    ]
    out, _ = manage("verify")
    assert out.startswith("OK: 2 rows in ")


def test_verify_reports_a_tampered_row_with_exit_1(leza: Leza, tmp_path: Path) -> None:
    leza.audit.record(action="update", entity_type="role", entity_id="7", after={"n": 1})
    leza.audit.record(action="update", entity_type="role", entity_id="7", after={"n": 2})
    assert leza.flush(5)
    assert manage("verify")[0] == "OK: 2 rows in 1 chains verified\n"
    with sqlite3.connect(tmp_path / "leza.db") as db:
        db.execute("UPDATE leza_audit SET entity_id = '8' WHERE seq = 1")
    db.close()
    out = io.StringIO()
    with pytest.raises(SystemExit) as info:
        call_command("leza_verify", stdout=out)
    assert info.value.code == 1
    assert out.getvalue().startswith("BROKEN: ")


def test_purge_audit_keeps_the_projects_chain_verifiable(leza: Leza) -> None:
    now = time.time_ns() // 1000
    for n, ts in enumerate([now - 200 * DAY, now - 100 * DAY, now]):
        leza.record(AuditEvent(id=new_event_id(ts), ts=ts, action="update", entity_type="role",
                               entity_id="1", after={"n": n}))  # fmt: skip
    assert leza.flush(5)
    out, _ = manage("purge", kind="audit", older_than="90d", yes=True)
    assert out.startswith("deleted 2 audit events before ")
    assert [a["after"] for a in leza.query.audit()] == [{"n": 2}]
    out, _ = manage("verify")
    assert out == (
        "OK: 1 rows in 1 chains verified (2 older rows of 1 chains purged, signed purge markers)\n"
    )


def test_check_uses_the_project_settings(
    leza: Leza, leza_conf: dict[str, Any], tmp_path: Path
) -> None:
    out, _ = manage("check")
    checks = check_lines(out)
    assert checks["config"] == ("OK", "settings load (app_name='djangoproject')")
    assert checks["secret"] == ("OK", "secret key set")  # derived from SECRET_KEY
    assert checks["storage"][0] == "OK"
    assert str(tmp_path / "leza.db") in checks["storage"][1]
    assert checks["geoip"][0] == "OK"
    with override_settings(LEZA={**leza_conf, "storage": f"sqlite:///{tmp_path / 'nope.db'}"}):
        out = io.StringIO()
        with pytest.raises(SystemExit) as info:
            call_command("leza_check", stdout=out)
    assert info.value.code == 1
    assert check_lines(out.getvalue())["storage"][0] == "FAIL"


def test_bad_settings_are_a_command_error(leza_conf: dict[str, Any]) -> None:
    with (
        override_settings(LEZA={**leza_conf, "storage": "redis://x/0"}),
        pytest.raises(CommandError, match="unknown storage URL scheme 'redis'") as info,
    ):
        manage("tail")
    assert info.value.returncode == 2
    out = io.StringIO()
    with (
        override_settings(LEZA={**leza_conf, "storage": "redis://x/0"}),
        pytest.raises(SystemExit) as exited,
    ):
        call_command("leza_check", stdout=out)  # reports every check, then exits 1
    assert exited.value.code == 1
    checks = check_lines(out.getvalue())
    assert checks["config"][0] == "OK"
    assert checks["storage"][0] == "FAIL"
    assert checks["storage"][1].startswith("unknown storage URL scheme 'redis' in 'redis://x/0'")


# --------------------------------------------------------------------------- django-admin


def django_admin(*args: str, storage: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEZA_")}
    env.update(
        DJANGO_SETTINGS_MODULE="djangoproject.settings",
        PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
        LEZA_STORAGE=storage,  # settings.LEZA leaves storage to the environment
    )
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_django_admin_exit_codes_and_output(leza: Leza, leza_conf: dict[str, Any]) -> None:
    leza.storage.write(access_events())
    storage = leza_conf["storage"]
    done = django_admin("leza_export", "--kind", "access", "--format", "csv", storage=storage)
    assert done.returncode == 0, done.stderr
    reader = csv.DictReader(io.StringIO(done.stdout, newline=""))
    assert reader.fieldnames == columns_for("access")
    assert len(list(reader)) == 6
    done = django_admin("leza_purge", "--kind", "access", "--older-than", "1d", storage=storage)
    assert done.returncode == 2
    assert done.stderr == (
        "CommandError: refusing to delete without --yes: stdin is not a terminal, nobody can "
        "confirm\n"
    )
    done = django_admin("leza_tail", "--storage", storage, storage=storage)
    assert done.returncode == 2  # the project's storage, never another
    assert "unrecognized arguments: --storage" in done.stderr
    done = django_admin("leza_tail", "-n", "1", storage=storage)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2025-07-06T15:49:24.067000Z  denied  GET  /api/items/6")
