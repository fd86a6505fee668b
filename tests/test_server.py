"""Real servers in subprocesses: what a deployment sees at shutdown."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from leza_middleware import LezaMiddleware

    async def home(request):
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/{n:int}", home)])
    app.add_middleware(LezaMiddleware)   # configured from LEZA_* variables
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as con:
        total, distinct = con.execute(
            "select count(*), count(distinct request_id) from leza_access"
        ).fetchone()
    return int(total), int(distinct)


def env_for(tmp_path: Path, db: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LEZA_STORAGE=f"sqlite:///{db}",
        LEZA_GEOIP_DB="off",
        LEZA_FLUSH_INTERVAL="60",  # only the shutdown path can write in time
        LEZA_BATCH_SIZE="100000",
        LEZA_SPILL_DIR=str(tmp_path / "spill"),
        PYTHONPATH=str(tmp_path),
    )
    return env


@pytest.mark.slow
def test_uvicorn_stopped_gracefully_after_n_requests_stores_exactly_n(tmp_path: Path) -> None:
    (tmp_path / "srvapp.py").write_text(APP)
    db = tmp_path / "srv.db"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "srvapp:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env_for(tmp_path, db),
        cwd=tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/0", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        n = 300
        with httpx.Client(base_url=base) as client:
            for i in range(1, n):
                assert client.get(f"/{i}").status_code == 200
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert proc.wait(20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert count(db) == (n, n)


def test_events_written_at_interpreter_exit_without_explicit_flush(tmp_path: Path) -> None:
    db = tmp_path / "exit.db"
    script = textwrap.dedent(
        f"""
        import anyio, httpx
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from leza_middleware import Leza, LezaMiddleware

        leza = Leza(storage="sqlite:///{db}", geoip_db=False, flush_interval=60,
                    batch_size=100000, spill_dir="{tmp_path / "spill"}")
        inner = Starlette(routes=[Route("/", lambda r: PlainTextResponse("x"))])
        app = LezaMiddleware(inner, leza=leza)

        async def main():
            t = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=t, base_url="http://t") as c:
                for _ in range(25):
                    await c.get("/")
        anyio.run(main)
        assert leza.stats()["pending"] == 25
        # no flush, no shutdown: the atexit hook must write them
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert count(db) == (25, 25)


PLAIN_APP = textwrap.dedent(
    """
    from leza_middleware import LezaMiddleware

    async def plain(scope, receive, send):
        # A bare ASGI app that knows nothing of lifespan.
        if scope["type"] != "http":
            raise RuntimeError(f"unsupported scope {scope['type']}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = LezaMiddleware(plain)
    """
)


@pytest.mark.slow
def test_app_without_lifespan_support_still_flushes_at_sigterm(tmp_path: Path) -> None:
    # uvicorn ends a graceful SIGTERM by re-raising the signal, so atexit never
    # runs: the middleware answers lifespan itself to flush at shutdown.
    (tmp_path / "plainapp.py").write_text(PLAIN_APP)
    db = tmp_path / "plain.db"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "plainapp:app", "--port", str(port),
         "--log-level", "warning"],
        env=env_for(tmp_path, db),
        cwd=tmp_path,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/0", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        with httpx.Client(base_url=base) as client:
            for i in range(1, 40):
                assert client.get(f"/{i}").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert count(db) == (40, 40)
