"""``leza demo`` end to end, and the CLI's basics (``--version``, ``--help``, errors).

The demo starts a real FastAPI app under uvicorn on a loopback port, drives it
with browsers, bots and client IPs, and prints what the middleware recorded. The
locations come from the GeoLite2 database of ``maxminddb-geolite2`` (part of the
``test`` extra); without it the city checks are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from leza_middleware import __version__, cli

HAS_GEOLITE2 = importlib.util.find_spec("_maxminddb_geolite2") is not None
REQUESTS = 16  # len(leza_middleware.demo.TRAFFIC)

# The session-record names of DESIGN.md ("keep these names in JSON output").
SESSION_KEYS = {"_id", "browser", "os", "device", "bot", "geoLocationInfoOfIp", "performer"}
BROWSER_KEYS = {"type", "name", "version", "engine", "engineVersion"}
OS_KEYS = {"name", "version", "platform"}
DEVICE_KEYS = {"type", "brand", "model"}
GEO_KEYS = {
    "ip", "country_code", "country_name", "region_code", "region_name", "city", "zip_code",
    "time_zone", "latitude", "longitude", "metro_code",
}  # fmt: skip
PERFORMER_KEYS = {
    "id", "name", "email", "picture_url", "organization_id", "organization_name", "role_name",
    "clientid", "organization_unit_id", "organization_unit_name", "organization_unit_labels",
    "organizations",
}  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def parse_table(output: str) -> list[dict[str, str]]:
    """The rows of the demo's table as dicts keyed by its column titles."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("TIME  "))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), f"cannot split {line!r} into {header}"
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def find_row(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    """The one row whose columns (given as lower-case keyword names) equal ``match``."""
    found = [r for r in rows if all(r[k.upper()] == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} rows match {match}: {rows}"
    return found[0]


def full_event(output: str) -> dict[str, Any]:
    """The JSON printed after "One event in full:"."""
    _, marker, rest = output.partition("One event in full:\n")
    assert marker, "the demo printed no full event"
    text = rest.split("\n\nThe other tabs", 1)[0]
    event: dict[str, Any] = json.loads(text)
    return event


def run_demo_in_process(capsys: pytest.CaptureFixture[str], storage: str) -> tuple[int, str]:
    # demo.run_demo's ``out`` parameter defaults to the sys.stdout of the moment the
    # module was imported, which is not capsys's stream when another test imported
    # it first; a fresh import under capsys binds the stream this test captures.
    with pytest.MonkeyPatch.context() as mp:
        mp.delitem(sys.modules, "leza_middleware.demo", raising=False)
        code = cli.main(["demo", "--storage", storage])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out


# ----------------------------------------------------------------------------- leza demo


def test_demo_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    code, out = run_demo_in_process(capsys, f"sqlite:///{db}")

    assert code == 0, out
    assert db.is_file()
    assert f"{REQUESTS} requests sent, {REQUESTS} access events stored in" in out
    assert f"sqlite:///{db}" in out
    # Access events plus what the app and the monitor added (audit, logs, probes,
    # advisories): all written, nothing dropped.
    recorder = re.search(
        r"recorder: enqueued=(\d+) written=(\d+) dropped=0 spilled=0 pending=0", out
    )
    assert recorder is not None, out
    assert int(recorder.group(1)) == int(recorder.group(2)) > REQUESTS

    # The other tabs from the same traffic.
    assert "SESSION   " in out
    assert "1 ended (logout)" in out
    assert 'AUDIT     create item:43 by dave {"name": "Deluxe widget", "price": "19.90"}' in out
    assert "AUDIT     chain intact" in out
    assert re.search(
        r"LOG       INFO     leza_demo.app: item 43 created \(request demo-\w+-04, dave\)", out
    )
    assert re.search(r"LOG       ERROR    leza_demo.app: about to fail on purpose", out)
    assert re.search(r"CHECK     demo-api: UP \(.* ms\), uptime 24 h 100.0%", out)
    assert "CHECK     payments: DOWN (ConnectionRefusedError" in out
    assert "ADVISORY  HIGH     Service payments is DOWN" in out
    assert re.search(r"CHECK     search: UP \(.* ms\)", out)  # down at first, then recovered
    # It ends with STATE, as `leza status` prints it: the services board first.
    state = out.split("STATE of the demo's minutes", 1)[1]
    assert state.index("SERVICES") < state.index("TRAFFIC") < state.index("ENDPOINTS")
    assert re.search(r"payments\s+DOWN\s+.*1, last ongoing after", state)
    assert re.search(r"search\s+UP\s+.*1, last recovered after", state)
    traffic = f"TRAFFIC    {REQUESTS} requests, 1 server error (6.25 %), 1 client error, 1 denied"
    assert traffic in state
    assert re.search(r"GET\s+/reports/\{report_id\}\s+1\s+0\s+0\s+\d+ ms\s+[\d.]+ ms", state)
    assert re.search(r"GET\s+/admin\s+2\s+0\s+1\s", state)
    key = "LEZA_SECRET_KEY=leza-demo-key-not-a-secret"
    assert f"{key} leza dashboard --storage sqlite:///{db}" in out
    assert f"{key} leza verify --storage sqlite:///{db}" in out

    rows = parse_table(out)
    assert len(rows) == REQUESTS
    assert [r["ENDPOINT"] for r in rows][:3] == ["/", "/items/42", "/"]  # oldest first

    # Devices: a desktop browser, a phone, bots, and an unknown client.
    chrome = find_row(rows, ip="193.0.6.139", endpoint="/", type="GET")
    assert chrome["DEVICE"] == "Chrome / Windows / desktop"
    assert chrome["PERFORMER"] == "alice"
    iphone = find_row(rows, ip="203.2.218.214")
    assert iphone["DEVICE"] == "Mobile Safari / iOS / smartphone"
    assert iphone["PERFORMER"] == "bob"
    googlebot = find_row(rows, ip="2001:4860:4860::8888")
    assert googlebot["DEVICE"] == "bot: Googlebot"
    assert googlebot["PERFORMER"] == "-"
    assert find_row(rows, ip="1.1.1.1")["DEVICE"] == "bot: bingbot"

    # The query token is redacted before storage; the value never shows.
    assert find_row(rows, ip="89.160.20.112")["ENDPOINT"] == "/items/7?color=red&token=[Filtered]"
    assert "s3cr3t" not in out

    # Outcomes: 201, a 403 recorded as denied, a 404 and the app's own 500.
    assert find_row(rows, endpoint="/items", type="POST")["STATUS"] == "201"
    denied = find_row(rows, endpoint="/admin", performer="bob")
    assert (denied["ACTION"], denied["STATUS"]) == ("denied", "403")
    admin = find_row(rows, endpoint="/admin", performer="root")
    assert (admin["ACTION"], admin["STATUS"]) == ("access", "200")
    assert find_row(rows, endpoint="/missing")["STATUS"] == "404"
    boom = find_row(rows, endpoint="/boom")
    assert (boom["STATUS"], boom["PERFORMER"]) == ("500", "alice")

    # An invalid client IP is stored as received, flagged, and not geolocated.
    invalid = find_row(rows, ip="161.35.614.165 (invalid)")
    assert invalid["LOCATION"] == "-"
    # A private address has no location either.
    assert find_row(rows, ip="10.1.2.3")["LOCATION"] == "-"

    if not HAS_GEOLITE2:
        assert "note: no GeoIP database" in out
        pytest.skip("maxminddb-geolite2 is not installed: no cities to check")

    assert "ADVISORY  HIGH     Impossible travel for alice: Amsterdam, NL" in out
    assert chrome["LOCATION"] == "Amsterdam, NL"
    assert iphone["LOCATION"] == "Sydney, AU"
    assert googlebot["LOCATION"].endswith(", US")
    assert find_row(rows, ip="2a00:1450:4001:81b::200e")["LOCATION"] == "Frankfurt am Main, DE"
    assert find_row(rows, ip="81.2.69.142")["LOCATION"].endswith(", GB")

    event = full_event(out)
    assert event.keys() >= SESSION_KEYS | {"request_id", "machine_identifier"}
    assert event["_id"]
    assert event["request_id"].startswith("demo-")
    assert event["browser"].keys() >= BROWSER_KEYS
    assert event["os"].keys() >= OS_KEYS
    assert event["device"].keys() >= DEVICE_KEYS
    assert event["bot"] is None
    geo = event["geoLocationInfoOfIp"]
    assert geo.keys() >= GEO_KEYS
    assert geo["ip"] == event["ip"]
    assert event["performer"].keys() >= PERFORMER_KEYS
    # The sample is the first request with a location and a performer: alice's.
    assert event["performer"]["id"] == "alice"
    assert (event["browser"]["name"], event["os"]["name"], event["device"]["type"]) == (
        "Chrome",
        "Windows",
        "desktop",
    )
    assert (geo["city"], geo["country_code"]) == ("Amsterdam", "NL")


def test_the_demo_database_verifies_and_is_revocable_afterwards(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the demo prints to run next works: its audit rows verify with the
    # key it names, across two runs on one file, and the dashboard may write.
    db = tmp_path / "demo.db"
    for _ in range(2):
        code, out = run_demo_in_process(capsys, f"sqlite:///{db}")
        assert code == 0, out
    monkeypatch.setenv("LEZA_SECRET_KEY", "leza-demo-key-not-a-secret")
    assert cli.main(["verify", "--storage", f"sqlite:///{db}"]) == 0
    assert "OK: 2 rows in 2 chains verified" in capsys.readouterr().out

    # With a key of its own set, the demo uses it and prints no key.
    monkeypatch.setenv("LEZA_SECRET_KEY", "my-own-secret-key-0123456789")
    code, out = run_demo_in_process(capsys, f"sqlite:///{tmp_path / 'own.db'}")
    assert code == 0
    assert "LEZA_SECRET_KEY=" not in out
    assert cli.main(["verify", "--storage", f"sqlite:///{tmp_path / 'own.db'}"]) == 0


def test_demo_bad_storage_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["demo", "--storage", "redis://localhost:6379/0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("leza: ")
    assert "unknown storage URL scheme 'redis'" in err
    assert "Traceback" not in err

    missing = tmp_path / "missing" / "demo.db"
    assert cli.main(["demo", "--storage", f"sqlite:///{missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_storage_defaults_to_leza_storage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unusable URL shows which storage was picked without running the demo.
    monkeypatch.setenv("LEZA_STORAGE", "redis://from-the-environment/0")
    assert cli.main(["demo"]) == 2
    assert "unknown storage URL scheme 'redis'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CLI basics


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"leza-middleware {__version__}"


def test_demo_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: leza demo")
    assert "--storage URL" in out
    assert "LEZA_STORAGE" in out


def test_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


# ----------------------------------------------------------------------------- subprocesses


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )


@pytest.mark.slow
def test_python_m_leza_middleware_demo(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    proc = _run(
        [sys.executable, "-m", "leza_middleware", "demo", "--storage", f"sqlite:///{db}"], tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{REQUESTS} requests sent, {REQUESTS} access events" in proc.stdout
    rows = parse_table(proc.stdout)
    assert len(rows) == REQUESTS
    assert find_row(rows, ip="2001:4860:4860::8888")["DEVICE"] == "bot: Googlebot"
    assert find_row(rows, endpoint="/boom")["STATUS"] == "500"
    if HAS_GEOLITE2:
        assert find_row(rows, ip="203.2.218.214")["LOCATION"] == "Sydney, AU"
        assert full_event(proc.stdout)["performer"]["id"] == "alice"
    assert db.is_file()
    assert not (tmp_path / "leza.db").exists()  # --storage, not the default


@pytest.mark.slow
def test_console_scripts(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("leza")
    if not script.is_file():
        pytest.skip(f"no 'leza' console script beside {sys.executable} (not a pip install)")
    version = _run([str(script), "--version"], tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"leza-middleware {__version__}"
    helped = _run([str(script), "demo", "--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "--storage URL" in helped.stdout
    module = _run([sys.executable, "-m", "leza_middleware", "--version"], tmp_path)
    assert module.returncode == 0, module.stderr
    assert module.stdout.strip() == f"leza-middleware {__version__}"
