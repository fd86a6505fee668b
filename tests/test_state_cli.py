"""``leza status`` and ``manage.py leza_status``: STATE in the terminal.

The same dict as ``leza.query.state()`` (``--json``), or text with the services
board first; recorded text that carries terminal escape sequences (a route
template, a check name, an error) never reaches the terminal as one.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from test_state import HOUR, MIN, access, check, history

from leza_middleware import Leza, cli
from leza_middleware.cli.status import render
from leza_middleware.query import time_us
from leza_middleware.storage import SQLStorage

ESCAPES = ("\x1b[31m", "\x1b]0;pwned\x07", "\x9b2J", "\u202e")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["status", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'leza.db'}"
    storage = SQLStorage(url)
    storage.setup()
    storage.write(history(time_us()))
    storage.close()
    return url


def test_text_has_the_services_board_first(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, err = run(capsys, "--storage", db)
    assert (code, err) == (0, "")
    assert out.index("SERVICES") < out.index("TRAFFIC") < out.index("ENDPOINTS")
    assert out.index("ENDPOINTS") < out.index("WHO IS ON") < out.index("RECORDER")
    assert out.index("RECORDER") < out.index("ADVISORIES")
    assert re.search(r"queue\s+DOWN\s+30 min ago\s+.*1, last ongoing after 30 min\s+timed out", out)
    assert re.search(r"db\s+UP\s+1 h ago\s+.*1, last recovered after 1 h 0 min", out)
    assert "TRAFFIC    40 requests, 1 server error (2.50 %), 4 client errors, 2 denied" in out
    assert re.search(r"GET\s+/slow\s+20\s+0\s+0\s+", out)
    assert "3 active sessions" in out
    assert "in the period: 3 performers seen, 3 logins, 1 failed login\n" in out
    assert "this process records nothing" in out
    assert re.search(r"HIGH\s+a burst of denials\s+\(burst, 2 h ago\)", out)


def test_json_is_the_query_state(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, _ = run(capsys, "--storage", db, "--json", "--since", "2h")
    assert code == 0
    state = json.loads(out)
    assert state["bucket"] == 60
    assert state["requests"] == 20
    leza = Leza(storage=db, geoip_db=False)
    try:
        expected = leza.query.state(since=state["from"], until=state["to"])
    finally:
        leza.shutdown()
    for key in ("generated_at",):
        state.pop(key), expected.pop(key)
    # The services' ongoing outages last longer at each read; the rest is identical.
    for s in (*state["services"], *expected["services"]):
        for i in s["incidents"]:
            i.pop("duration_s")
    assert state == json.loads(json.dumps(expected))


def test_bad_periods_and_a_missing_database(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "--storage", db, "--since", "1h", "--until", "2h")
    assert code == 2
    assert err.startswith("leza status: --since: the start (")
    assert "is after the end" in err
    code, _, err = run(capsys, "--storage", db, "--since", "2020-01-01")
    assert (code, err.strip()) == (
        2, "leza status: --since: the period is longer than 400 days; start it later",
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "--storage", db, "--since", "yesterday")
    assert exit_.value.code == 2
    assert "invalid time 'yesterday'" in capsys.readouterr().err
    code, _, err = run(capsys, "--storage", f"sqlite:///{tmp_path / 'nope.db'}")
    assert code == 2
    assert "no database at" in err


def test_an_empty_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    SQLStorage(url).setup()
    code, out, _ = run(capsys, "--storage", url)
    assert code == 0
    assert "TRAFFIC    0 requests (no traffic recorded yet)" in out
    assert "SERVICES   no availability checks recorded" in out
    assert "0 active sessions" in out


def test_no_escape_sequence_reaches_the_terminal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'evil.db'}"
    storage = SQLStorage(url)
    storage.setup()
    now = time_us()
    evil = "".join(ESCAPES)
    storage.write([
        access(now - HOUR, "GET", f"/x/{evil}/{{id}}", 200),
        check(now - 2 * MIN, f"svc{evil}", "down", "unknown", error=f"refused{evil}"),
    ])  # fmt: skip
    storage.close()
    for argv in ((), ("--json",)):
        code, out, _ = run(capsys, "--storage", url, *argv)
        assert code == 0
        for seq in ("\x1b", "\x07", "\x9b", "\u202e"):
            assert seq not in out, (argv, seq)
        if argv:
            state = json.loads(out)  # the escapes are JSON escapes: the values are exact
            assert state["services"][0]["name"] == f"svc{evil}"
            assert state["endpoints"][0]["route"] == f"/x/{evil}/{{id}}"
        else:
            assert "svc?[31m?]0;pwned??2J?" in out


def test_render_of_a_backend_without_rollups() -> None:
    state: dict[str, Any] = {
        "from": "2025-01-01T00:00:00.000000Z", "to": "2025-01-02T00:00:00.000000Z",
        "traffic": {"kept": False, "note": "Traffic needs a storage backend that keeps rollups."},
        "requests": None, "endpoints": [], "services": [], "advisories": [],
        "sessions": {"active": 0, "by_country": [], "by_device": [], "performers": 0,
                     "logins": None, "login_failures": None},
        "recorder": {"live": False, "spill_files": None, "newest": {"access": None}},
    }  # fmt: skip
    text = render(state, now=0)
    assert "TRAFFIC    Traffic needs a storage backend that keeps rollups." in text
    assert "- logins, - failed logins" in text
    assert "spill files waiting: unknown" in text


# ----------------------------------------------------------------------------- Django


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Leza]:
    if not settings.configured:
        from djangoproject import settings as project_settings

        settings.configure(
            **{k: getattr(project_settings, k) for k in dir(project_settings) if k.isupper()}
        )
        django.setup()
    from leza_middleware.django import get_leza

    conf = {"storage": f"sqlite:///{tmp_path / 'dj.db'}", "geoip_db": False,
            "spill_dir": str(tmp_path / "spill"), "app_name": "djangoproject"}  # fmt: skip
    with override_settings(LEZA=conf):
        leza = get_leza()
        leza.query.ensure_ready()
        leza.storage.write(history(time_us()))
        yield leza
    leza.shutdown(timeout=2)


def test_manage_py_leza_status(project: Leza) -> None:
    out = io.StringIO()
    call_command("leza_status", json=True, stdout=out)
    state = json.loads(out.getvalue())
    assert state["requests"] == 40
    assert {s["name"] for s in state["services"]} == {"api", "db", "queue"}
    out = io.StringIO()
    call_command("leza_status", since="3h", stdout=out)
    assert out.getvalue().startswith("STATE      ")
    assert "SERVICES" in out.getvalue()
