"""Importing the library for its middleware does not load SQLAlchemy, SQLModel or
Alembic; an app recording to memory or JSON Lines never loads them, while it
serves requests and the dashboard; a SQL storage loads them when it is opened.

Each case runs in a fresh interpreter (the test process has them loaded already).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("sqlalchemy", "sqlmodel", "alembic")


def run(code: str, cwd: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_importing_the_middleware_loads_no_sql_library(tmp_path: Path) -> None:
    out = run(
        f"""
        import sys
        import leza_middleware
        from leza_middleware import Leza, LezaMiddleware, LezaWSGIMiddleware
        from leza_middleware.storage import Storage, MemoryStorage, JSONLStorage, Capability
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """,
        tmp_path,
    )
    assert out.strip() == "[]"


@pytest.mark.parametrize("url", ["memory://", "jsonl://events"])
def test_an_app_on_memory_or_jsonl_serves_requests_and_the_dashboard_without_them(
    tmp_path: Path, url: str
) -> None:
    out = run(
        f"""
        import sys
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient
        from leza_middleware import Leza, LezaMiddleware
        from leza_middleware.dashboard import make_asgi_app

        leza = Leza(storage={url!r}, geoip_db=False, spill_dir="spill")
        app = Starlette(routes=[Route("/hi", lambda r: PlainTextResponse("hi"))])
        app.mount("/leza", make_asgi_app(leza, authorize=lambda r: True))
        app.add_middleware(LezaMiddleware, leza=leza)
        with TestClient(app) as client:
            assert client.get("/hi").text == "hi"
            assert leza.flush(10)
            assert len(leza.query.access()) == 1
            for path in ("/leza/state", "/leza/api/state", "/leza/access", "/leza/api/access",
                         "/leza/audit", "/leza/sessions"):
                assert client.get(path).status_code == 200, path
        leza.shutdown(5)
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """,
        tmp_path,
    )
    assert out.strip() == "[]"


def test_a_sql_storage_loads_them_when_it_is_opened(tmp_path: Path) -> None:
    out = run(
        """
        import sys
        import leza_middleware.storage as storage
        from leza_middleware import Leza
        before = "sqlalchemy" in sys.modules
        leza = Leza(storage="sqlite:///leza.db", geoip_db=False, spill_dir="spill")
        opened = "sqlalchemy" in sys.modules
        assert storage.is_sql(leza.storage) and isinstance(leza.storage, storage.SQLStorage)
        leza.audit.record(actor={"id": "u1"}, action="update", entity_type="t", entity_id="1")
        assert leza.flush(10) and leza.audit.verify()
        leza.shutdown(5)
        print(before, opened)
        """,
        tmp_path,
    )
    assert out.split() == ["False", "True"]
    assert (tmp_path / "leza.db").exists()
