from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from leza_middleware import Leza
from leza_middleware.events import Event
from leza_middleware.storage import MemoryStorage

SHARED_TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LEZA_* from the developer's shell; default spill dirs under tmp."""
    import os

    for key in list(os.environ):
        if key.startswith("LEZA_") and key != "LEZA_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="session")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmdb_factory import write_city_db

    path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    write_city_db(path)
    return path


@pytest.fixture
def make_leza(tmp_path: Path, city_db: Path) -> Iterator[Any]:
    """Build Leza instances with test-friendly defaults; shut them all down after."""
    made: list[Leza] = []

    def factory(**kwargs: Any) -> Leza:
        kwargs.setdefault("storage", f"sqlite:///{tmp_path / 'leza.db'}")
        kwargs.setdefault("geoip_db", str(city_db))
        kwargs.setdefault("spill_dir", str(tmp_path / f"spill-{len(made)}"))
        kwargs.setdefault("flush_interval", 0.05)
        leza = Leza(**kwargs)
        made.append(leza)
        return leza

    yield factory
    for leza in made:
        leza.shutdown(timeout=2)


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
