"""Each example starts with its one documented command and records events.

The example folder is copied to a temporary directory first (its SQLite file
is written next to the app), then started exactly as its README says, with a
free port; requests go over real HTTP and the events are read back through
``leza.query.access()`` on the example's database.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for

from leza_middleware import Leza

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], port: int, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{cmd} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{cmd} did not listen on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stored(db: Path, count: int) -> list[dict[str, Any]]:
    """The example's events, once ``count`` of them reached its database."""
    reader = Leza(storage=f"sqlite:///{db}", geoip_db=False, spill_dir=str(db.parent / "rs"))
    try:
        assert wait_for(lambda: db.exists() and len(reader.query.access()) >= count, 10)
        return reader.query.access()
    finally:
        reader.shutdown(2)


def copy_example(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(ROOT / "examples" / name, target, ignore=shutil.ignore_patterns("*.db*"))
    return target


def env_without_leza() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "LEZA_GEOIP_DB": "off", "PYTHONUNBUFFERED": "1"}


def test_fastapi_example(tmp_path: Path) -> None:
    app_dir = copy_example("fastapi_app", tmp_path)
    port = free_port()
    # README: python examples/fastapi_app/app.py
    proc = start([sys.executable, str(app_dir / "app.py")], port, tmp_path,
                 {**env_without_leza(), "PORT": str(port)})  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/items/42", headers={"Authorization": "Bearer alice"}).is_success
        assert httpx.get(f"{base}/admin").status_code == 403
        events = stored(app_dir / "leza-example.db", 2)
    finally:
        stop(proc)
    by_path = {e["endpoint"]: e for e in events}
    assert by_path["/items/42"]["performer"]["name"] == "Alice"
    assert by_path["/items/42"]["route"] == "/items/{item_id}"
    assert by_path["/admin"]["action"] == "denied"


def test_flask_example(tmp_path: Path) -> None:
    app_dir = copy_example("flask_app", tmp_path)
    port = free_port()
    # README: python examples/flask_app/app.py
    proc = start([sys.executable, str(app_dir / "app.py")], port, tmp_path,
                 {**env_without_leza(), "PORT": str(port)})  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/items/42", headers={"X-Demo-User": "alice"}).is_success
        assert httpx.get(f"{base}/admin").status_code == 403
        events = stored(app_dir / "leza-example.db", 2)
    finally:
        stop(proc)
    by_path = {e["endpoint"]: e for e in events}
    assert by_path["/items/42"]["route"] == "/items/{item_id}"
    assert by_path["/items/42"]["performer"]["name"]
    assert by_path["/admin"]["action"] == "denied"


def test_django_example(tmp_path: Path) -> None:
    app_dir = copy_example("django_app", tmp_path)
    port = free_port()
    # README: python examples/django_app/manage.py runserver (on a free port, no reloader)
    proc = start(
        [sys.executable, str(app_dir / "manage.py"), "runserver", str(port), "--noreload"],
        port,
        tmp_path,
        env_without_leza(),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"X-Demo-User": "alice", "X-Demo-Role": "admin"}
        assert httpx.get(f"{base}/items/42/", headers=headers).is_success
        assert httpx.get(f"{base}/admin-only/", headers={"X-Demo-User": "bob"}).status_code == 403
        events = stored(app_dir / "leza.db", 2)
    finally:
        stop(proc)
    by_path = {e["endpoint"]: e for e in events}
    assert by_path["/items/42/"]["route"] == "/items/{item_id}/"
    assert by_path["/items/42/"]["performer"]["name"]
    assert by_path["/admin-only/"]["action"] == "denied"
