from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from leza_middleware import Leza
from leza_middleware.events import Event
from leza_middleware.storage import MemoryStorage

SHARED_TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"

#: The test servers CI started: kept when a test clears LEZA_* from the environment.
CLICKHOUSE_ENV = ("LEZA_TEST_CLICKHOUSE_URL", "LEZA_TEST_CLICKHOUSE_URL_2")
KEPT_ENV = frozenset({"LEZA_TEST_POSTGRES_URL", *CLICKHOUSE_ENV})


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LEZA_* from the developer's shell; default spill dirs under tmp."""
    import os

    for key in list(os.environ):
        if key.startswith("LEZA_") and key not in KEPT_ENV:
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="session")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmdb_factory import write_city_db

    path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    write_city_db(path)
    return path


@pytest.fixture
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where ``make_leza`` stores by default: a SQLite file in tmp_path, or — for
    tests marked ``both_databases`` — also a schema of its own on the session's
    PostgreSQL (see ``pytest_generate_tests``), dropped afterwards."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'leza.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@contextmanager
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """``postgres_url`` confined to a fresh schema (via ``search_path``)."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    schema = f"leza_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_databases`` run on SQLite and on PostgreSQL."""
    if metafunc.definition.get_closest_marker("both_databases") is None:
        return
    if "storage_url" in metafunc.fixturenames:
        metafunc.parametrize("storage_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def make_leza(tmp_path: Path, city_db: Path, storage_url: str) -> Iterator[Any]:
    """Build Leza instances with test-friendly defaults; shut them all down after."""
    made: list[Leza] = []

    def factory(**kwargs: Any) -> Leza:
        kwargs.setdefault("storage", storage_url)
        kwargs.setdefault("geoip_db", str(city_db))
        kwargs.setdefault("spill_dir", str(tmp_path / f"spill-{len(made)}"))
        kwargs.setdefault("flush_interval", 0.05)
        kwargs.setdefault("secret_key", "tests-secret-key-0123456789")
        leza = Leza(**kwargs)
        made.append(leza)
        return leza

    yield factory
    for leza in made:
        leza.shutdown(timeout=2)


@pytest.fixture
def app_for(make_leza: Any) -> Iterator[Any]:
    """``app_for(kind, **settings)``: a real app of tests/test_revocation_startup.py
    (``asgi``, ``wsgi``, …) with sessions on, on the suite's storage; closed after."""
    from test_revocation_startup import SECRET, App, performer_for

    made: list[Any] = []

    def build(kind: str, **settings: Any) -> Any:
        settings.setdefault("performer", performer_for(kind))
        settings.setdefault("secret_key", SECRET)
        settings.setdefault("geoip_db", False)
        app = App(kind, make_leza(**settings))
        made.append(app)
        return app

    yield build
    for app in made:
        app.close()


class FlakyStorage(MemoryStorage):
    """A storage whose availability the test controls: down raises, slow sleeps.

    The faults a user's own Storage subclass can show (a network store that
    raises, or hangs); SQL-level faults are exercised on real databases.
    """

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.delay = 0.0
        self.release = threading.Event()
        self.write_calls = 0

    def write(self, events: Sequence[Event]) -> None:
        self.write_calls += 1
        if self.delay:
            self.release.wait(self.delay)
        if self.down:
            raise ConnectionError("storage is down (test)")
        super().write(events)


@pytest.fixture
def flaky_storage() -> Iterator[FlakyStorage]:
    storage = FlakyStorage()
    yield storage
    storage.release.set()


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def balanced(stats: dict[str, Any]) -> bool:
    return bool(
        stats["enqueued"]
        == stats["written"] + stats["dropped"] + stats["pending"] + stats["spilled"]
    )


# ----------------------------------------------------------------------------- PostgreSQL

POSTGRES_ENV = "LEZA_TEST_POSTGRES_URL"
POSTGRES_DB = "leza_test"


def _postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live: Debian's layout (newest first), else PATH."""

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name))

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "createdb")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary directory, on 127.0.0.1, trusting local users.

    initdb refuses to run as root, so under root the server runs as the
    ``postgres`` user (through ``runuser``) in a directory that user owns.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_owner: list[str] = []
        owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            import pwd

            try:
                pg = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL")
            owner = (pg.pw_uid, pg.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        # Not under pytest's basetemp, which only the user running the tests may enter.
        self.root = Path(tempfile.mkdtemp(prefix="leza-test-pg-"))
        if owner is not None:
            os.chown(self.root, *owner)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.started = False

    def _run(self, tool: str, *args: str, as_owner: bool = True) -> None:
        cmd = [*(self.as_owner if as_owner else []), str(self.bindir / tool), *args]
        proc = subprocess.run(
            cmd, cwd=self.root, capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                f"{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> str:
        """initdb, start, create the test database; the URL to it."""
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            # Throwaway data: durability traded for speed; TCP on loopback only.
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        for attempt in range(1, 6):  # the free port may be taken before the server binds it
            self.port = _free_port()
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", f"-p {self.port}",
                    "-w", "-t", "60", "start",
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 5:
                    raise
        self.started = True
        self._run(
            "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", POSTGRES_DB,
            as_owner=False,
        )  # fmt: skip
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{POSTGRES_DB}"

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL (``postgresql+psycopg://…``) shared by the whole test session.

    ``LEZA_TEST_POSTGRES_URL`` when set (CI starts its own server); else a
    throwaway cluster started once from the local server binaries
    (``/usr/lib/postgresql/*/bin`` or ``pg_ctl`` on PATH) and stopped at the end;
    else the requesting test is skipped.
    """
    url = os.environ.get(POSTGRES_ENV)
    if url:
        yield url
        return
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip(f"{POSTGRES_ENV} is not set and no PostgreSQL server binaries were found")
    server = ThrowawayPostgres(bindir)
    try:
        try:
            url = server.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            pytest.fail(f"could not start a throwaway PostgreSQL from {bindir}: {exc}")
        yield url
    finally:
        server.stop()


# ----------------------------------------------------------------------------- ClickHouse

#: Set by .ci/run: no ClickHouse server is a failure there, not a skip.
CLICKHOUSE_REQUIRED = os.environ.get("LEZA_REQUIRE_CLICKHOUSE") == "1"


@pytest.fixture(scope="session")
def clickhouse_urls() -> Iterator[tuple[str, str]]:
    """Two ClickHouse servers for the whole session (two shards of the
    ``leza_shards`` cluster), as ``clickhouse://127.0.0.1:PORT/leza_test`` URLs.

    ``LEZA_TEST_CLICKHOUSE_URL`` and ``…_URL_2`` when set (.ci/run starts its
    own); else two throwaway servers from the local binary
    (tests/clickhouse_server.py), stopped at the end; else the requesting test
    is skipped, or fails under ``LEZA_REQUIRE_CLICKHOUSE=1``.
    """
    from clickhouse_server import find_server, start_servers

    given = [os.environ.get(name) for name in CLICKHOUSE_ENV]
    if given[0] and given[1]:
        yield given[0], given[1]
        return
    command = find_server()
    if command is None:
        reason = (
            f"{CLICKHOUSE_ENV[0]} is not set and no ClickHouse server binary was found "
            "(clickhouse-server or clickhouse on PATH or in /usr/sbin)"
        )
        if CLICKHOUSE_REQUIRED:
            pytest.fail(f"{reason}; required under LEZA_REQUIRE_CLICKHOUSE=1")
        pytest.skip(reason)
    try:
        servers = start_servers(command)
    except RuntimeError as exc:
        pytest.fail(f"could not start throwaway ClickHouse servers with {command}: {exc}")
    try:
        yield servers[0].url, servers[1].url
    finally:
        for server in servers:
            server.stop()


@contextmanager
def clickhouse_database(url: str) -> Iterator[Any]:
    """A ClickHouseStorage on ``url``'s server (and cluster), in a database of its
    own, dropped afterwards from every server that has it."""
    pytest.importorskip("clickhouse_driver", reason="the [clickhouse] extra is not installed")
    import uuid

    from leza_middleware.storage.clickhouse import ClickHouseStorage

    base, _, query = url.partition("?")
    database = f"leza_t_{uuid.uuid4().hex[:12]}"
    storage = ClickHouseStorage(
        base.rsplit("/", 1)[0] + f"/{database}" + (f"?{query}" * bool(query))
    )
    try:
        yield storage
    finally:
        servers = storage._shards or [None]
        for shard in servers:
            storage.execute(f"DROP DATABASE IF EXISTS `{database}`", shard=shard)
        if storage.sharded:
            storage.execute(f"DROP DATABASE IF EXISTS `{database}`")
        storage.close()


@pytest.fixture
def clickhouse_storage(clickhouse_urls: tuple[str, str]) -> Iterator[Any]:
    """A ClickHouseStorage on the session's first server, in a database of its own."""
    with clickhouse_database(clickhouse_urls[0]) as storage:
        yield storage


@pytest.fixture
def sharded_storage(clickhouse_urls: tuple[str, str]) -> Iterator[Any]:
    """A ClickHouseStorage sharded over both of the session's servers (the
    ``leza_shards`` cluster), in a database of its own on each."""
    with clickhouse_database(clickhouse_urls[0] + "?cluster=leza_shards") as storage:
        yield storage


@pytest.fixture(params=["one server", "two shards"])
def ch_any(request: pytest.FixtureRequest) -> Any:
    """The ClickHouse storage on one server, and sharded over two."""
    name = "clickhouse_storage" if request.param == "one server" else "sharded_storage"
    return request.getfixturevalue(name)


# ----------------------------------------------------------------------------- webhook receiver


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server on loopback keeping every JSON body POSTed to it:
    (its URL, the bodies received so far)."""
    import http.server
    import json

    bodies: list[dict[str, Any]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/leza", bodies
    server.shutdown()
    server.server_close()
