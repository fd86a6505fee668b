"""The recorder's reliability contract: faults in storage never reach the app,
nothing is lost silently, and the books always balance."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FlakyStorage, balanced, wait_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from leza_middleware import LezaMiddleware
from leza_middleware.advisories.rules import Finding, Rule, RuleContext
from leza_middleware.events import AdvisoryEvent, Event
from leza_middleware.ids import new_event_id
from leza_middleware.request_path import raw_access
from leza_middleware.storage import MemoryStorage


def hello_app() -> Starlette:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    return Starlette(routes=[Route("/", home), Route("/login", home)])


def raw(i: int = 0, action: str | None = None) -> tuple[Any, ...]:
    """A finished request as an adapter captures it."""
    return raw_access(
        ts=time.time(), duration=0.001, request_id=f"rid{i}", path=f"/r/{i}",
        peer="127.0.0.1", user_agent=b"curl/8", action=action,
    )  # fmt: skip


def sqlite_count(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute("select count(*) from leza_access").fetchone()[0])


def sqlite_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("select id from leza_access")]


def test_storage_that_raises_retries_spills_then_replays(
    make_leza: Any, flaky_storage: FlakyStorage
) -> None:
    leza = make_leza(storage=flaky_storage, max_retries=2)
    flaky_storage.down = True
    for i in range(10):
        leza.recorder.offer(raw(i))
    assert leza.flush(5)
    s = leza.stats()
    assert s["written"] == 0
    assert s["spilled"] == 10
    assert s["retried"] == 2  # two retries of the first batch, then spill
    assert s["storage_down"] is True
    assert balanced(s)
    # while down, new batches go straight to the spill file (no retry storm)
    for i in range(10, 15):
        leza.recorder.offer(raw(i))
    assert leza.flush(5)
    assert leza.stats()["spilled"] == 15
    # storage returns: the next probe replays everything, once
    flaky_storage.down = False
    leza.recorder._next_probe = 0.0  # don't wait out the 1 s probe delay
    assert wait_for(lambda: leza.stats()["replayed"] == 15 and not leza.stats()["storage_down"])
    stored = leza.query.access(limit=100)
    assert sorted(e["request_id"] for e in stored) == sorted(f"rid{i}" for i in range(15))
    assert balanced(leza.stats())
    assert not any(Path(leza.settings.spill_dir).glob("*.jsonl"))


def test_hanging_storage_never_slows_requests_and_counts_stay_honest(
    make_leza: Any, flaky_storage: FlakyStorage
) -> None:
    flaky_storage.delay = 30.0  # every write hangs for 30 s (released at teardown)
    leza = make_leza(storage=flaky_storage, queue_size=50, batch_size=10)
    app = LezaMiddleware(hello_app(), leza=leza)
    import anyio

    async def run() -> list[float]:
        latencies = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for _ in range(200):
                t0 = time.perf_counter()
                r = await c.get("/")
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200
        return latencies

    latencies = anyio.run(run)
    # Nothing waits on the storage, hung for 30 s: a request well under that (not
    # 0.5 s, which a loaded 2-core test machine exceeded once by scheduling alone).
    assert max(latencies) < 5.0, max(latencies)
    s = leza.stats()
    assert s["enqueued"] == 200
    assert s["written"] == 0
    # one batch is stuck in storage, the queue is full, the rest were dropped
    assert s["dropped_by_reason"]["queue_full"] == s["dropped"] > 0
    assert s["pending"] <= 50 + 10
    assert balanced(s)
    # shutdown within its deadline spills what is pending instead of hanging
    t0 = time.monotonic()
    assert leza.shutdown(timeout=1.0) is False  # the worker is still stuck
    assert time.monotonic() - t0 < 2.0
    s = leza.stats()
    assert s["pending"] == 0
    assert s["spilled"] + s["dropped"] == 200
    assert balanced(s)


def test_queue_full_drops_counted_but_priority_events_spilled(
    make_leza: Any, flaky_storage: FlakyStorage
) -> None:
    flaky_storage.delay = 30.0
    leza = make_leza(storage=flaky_storage, queue_size=5, batch_size=5, flush_interval=60)
    for i in range(5):
        leza.recorder.offer(raw(i))  # fills the queue
    for i in range(5, 8):
        leza.recorder.offer(raw(i))  # dropped: queue_full
    leza.recorder.offer(raw(99, action="login"))  # must not be dropped
    s = leza.stats()
    assert s["dropped_by_reason"] == {"queue_full": 3}
    assert s["spilled"] == 1
    assert balanced(s)
    lines = [
        json.loads(line)
        for f in Path(leza.settings.spill_dir).glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert [e["action"] for e in lines] == ["login"]


def test_unwritable_spill_counts_drops(
    make_leza: Any, tmp_path: Path, flaky_storage: FlakyStorage
) -> None:
    spill = tmp_path / "spill-later-broken"
    flaky_storage.down = True
    leza = make_leza(storage=flaky_storage, spill_dir=str(spill), max_retries=0)
    # Valid when configured; then something puts a file where the directory
    # should be (a real fault: the spill cannot be created).
    spill.write_text("not a directory")
    for i in range(4):
        leza.recorder.offer(raw(i))
    assert leza.flush(5)
    s = leza.stats()
    assert s["dropped_by_reason"] == {"spill_failed": 4}
    assert balanced(s)


def test_spill_replayed_at_next_start_idempotently(make_leza: Any, tmp_path: Path) -> None:
    db = tmp_path / "leza.db"
    spill = tmp_path / "spill-shared"
    # run 1: shut down while the recorder can't write; events go to the spill file
    broken = FlakyStorage()
    broken.down = True
    first = make_leza(storage=broken, spill_dir=str(spill), max_retries=0)
    for i in range(7):
        first.recorder.offer(raw(i))
    first.shutdown(2)
    assert first.stats()["spilled"] == 7
    spilled_file = next(spill.glob("*.jsonl"))
    copy = spilled_file.read_text()
    # run 2: a healthy SQLite; the spill is replayed on start
    second = make_leza(storage=f"sqlite:///{db}", spill_dir=str(spill))
    second.recorder.offer(raw(100))
    assert second.flush(5)
    assert wait_for(lambda: second.stats()["replayed"] == 7)
    assert sqlite_count(db) == 8
    # the same spill content again (a crash mid-replay) stores nothing twice
    # Written under a name the replayer ignores, then renamed: a replay must not
    # catch the file half-written (the spill itself works this way).
    staged = spill / ".staged-again.tmp"
    staged.write_text(copy)
    os.replace(staged, spill / "spill-0-1-again.jsonl")
    second.recorder._wake.set()
    assert wait_for(lambda: second.stats()["replayed"] == 14)
    assert sqlite_count(db) == 8


def test_corrupt_spill_lines_are_skipped_and_counted(make_leza: Any, tmp_path: Path) -> None:
    spill = tmp_path / "spill-corrupt"
    spill.mkdir()
    (spill / "spill-1-2-abc.jsonl").write_text(
        '{"kind": "access", "broken\nnot json\n{"kind": "nope"}\n'
    )
    leza = make_leza(spill_dir=str(spill))
    leza.recorder.offer(raw(1))
    assert leza.flush(5)
    assert wait_for(lambda: leza.stats()["spill_corrupt_lines"] == 3)
    assert not any(spill.glob("*.jsonl"))


def test_books_balance_while_under_concurrent_load(make_leza: Any) -> None:
    leza = make_leza(batch_size=64, queue_size=500)
    stop = threading.Event()
    imbalances: list[dict[str, Any]] = []

    def watch() -> None:
        while not stop.is_set():
            s = leza.stats()
            if not balanced(s):
                imbalances.append(s)

    watcher = threading.Thread(target=watch)
    watcher.start()

    def produce(base: int) -> None:
        for i in range(2000):
            leza.recorder.offer(raw(base + i))

    producers = [threading.Thread(target=produce, args=(k * 10_000,)) for k in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    assert leza.flush(10)
    stop.set()
    watcher.join()
    assert imbalances == []
    s = leza.stats()
    assert s["enqueued"] == 8000
    assert s["written"] + s["dropped"] == 8000


def test_offers_racing_shutdown_are_written_or_spilled_never_stranded(
    make_leza: Any, tmp_path: Path
) -> None:
    # Request threads append without a lock; shutdown lands in the middle of
    # their offers. Whatever they queue after its final drain must not sit in
    # a dead queue: it is spilled (durably, one fsync each: keep that part short).
    db = tmp_path / "race.db"
    leza = make_leza(storage=f"sqlite:///{db}", batch_size=32, queue_size=1_000_000)
    started = threading.Barrier(5)
    stop = threading.Event()
    offered = [0] * 4

    def produce(k: int) -> None:
        started.wait()
        while not stop.is_set():
            leza.recorder.offer(raw(k * 1_000_000 + offered[k]))
            offered[k] += 1

    producers = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in producers:
        t.start()
    started.wait()
    time.sleep(0.05)
    leza.shutdown(5)
    time.sleep(0.01)
    stop.set()
    for t in producers:
        t.join()
    s = leza.stats()
    assert s["enqueued"] == sum(offered)
    assert s["pending"] == 0
    assert s["dropped"] == 0
    assert s["written"] > 0
    assert s["spilled"] > 0  # the race really happened: offers after shutdown were spilled
    assert s["written"] + s["spilled"] == sum(offered)
    assert balanced(s)
    # Spill files closed during shutdown may already have been replayed by the
    # worker's last round; the rest wait for the next start.
    assert sqlite_count(db) == s["written"] + s["replayed"]


def test_a_record_queued_during_the_final_drain_is_spilled(make_leza: Any) -> None:
    # The one interleaving the test above cannot force: shutdown runs between
    # an offer's "still open?" check and its append. (A queue that runs the
    # shutdown just before appending stands in for the thread switch.)
    leza = make_leza(flush_interval=60)
    rec = leza.recorder

    class ShutdownBeforeAppend(deque):  # type: ignore[type-arg]
        def append(self, item: Any) -> None:
            rec.shutdown(2)
            super().append(item)

    rec._queue = ShutdownBeforeAppend()
    rec.offer(raw(1))
    s = leza.stats()
    assert (s["enqueued"], s["spilled"], s["pending"]) == (1, 1, 0)
    assert balanced(s)
    lines = [
        json.loads(line)
        for f in Path(leza.settings.spill_dir).glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert [e["endpoint"] for e in lines] == ["/r/1"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_starts_its_own_recorder_with_an_empty_queue(
    make_leza: Any, tmp_path: Path
) -> None:
    db = tmp_path / "fork.db"
    leza = make_leza(storage=f"sqlite:///{db}", flush_interval=60, batch_size=1000)
    for i in range(5):
        leza.recorder.offer(raw(i))  # queued in the parent, not yet written
    assert leza.stats()["pending"] == 5
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            s0 = leza.stats()
            for i in range(100, 103):
                leza.recorder.offer(raw(i))
            ok = leza.flush(5)
            s1 = leza.stats()
            os.write(w, json.dumps({"before": s0, "after": s1, "ok": ok}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        report = json.loads(f.read())
    os.waitpid(pid, 0)
    assert report["before"]["pending"] == 0  # the parent's queue did not come along
    assert report["before"]["enqueued"] == 0
    assert report["ok"] is True
    assert report["after"]["written"] == 3
    assert leza.flush(5)
    ids = sqlite_ids(db)
    assert len(ids) == len(set(ids)) == 8


def test_one_bad_record_does_not_spoil_its_batch(make_leza: Any) -> None:
    leza = make_leza(flush_interval=60)
    good = [raw(i) for i in range(5)]
    broken = raw(99)[:3]  # a truncated record: cannot be enriched
    for item in (*good[:2], broken, *good[2:]):
        leza.recorder.offer(item)
    assert leza.flush(5)
    s = leza.stats()
    assert s["written"] == 5
    assert s["dropped_by_reason"] == {"invalid": 1}
    assert balanced(s)
    assert sorted(e["request_id"] for e in leza.query.access()) == [f"rid{i}" for i in range(5)]


def test_mixed_batches_keep_their_order(make_leza: Any) -> None:
    from leza_middleware.events import AccessEvent

    leza = make_leza()
    built = AccessEvent.build(
        id="0" * 31, ts=1, action="login", method="POST", endpoint="/login", route=None,
        status=200, duration_us=5, outcome="success", reason="User logged in",
        request_id="explicit", client_ip="81.2.69.142", ip_valid=True, peer_ip="81.2.69.142",
    )  # fmt: skip
    events = leza._prepare_batch([raw(1), built, raw(2)])
    assert [e.request_id for e in events] == ["rid1", "explicit", "rid2"]
    assert events[1] is built


def unstorable_advisory() -> AdvisoryEvent:
    """An event no database can store: its message holds a lone surrogate
    (what surrogateescape makes of an invalid UTF-8 byte), built by app code
    that skipped the library's own cleaning."""
    return AdvisoryEvent(
        id=new_event_id(time.time_ns() // 1000), ts=time.time_ns() // 1000,
        rule="custom", severity="low", message="bad byte: \udcff",
    )  # fmt: skip


@pytest.mark.both_databases
def test_one_unstorable_event_does_not_sink_its_batch(make_leza: Any, storage_url: str) -> None:
    leza = make_leza(storage=storage_url, flush_interval=60, max_retries=0)
    for i in range(10):
        leza.recorder.offer(raw(i))
    leza.record(unstorable_advisory())
    for i in range(10, 21):
        leza.recorder.offer(raw(i))
    assert leza.flush(5)
    s = leza.stats()
    assert s["written"] == 21
    assert s["dropped_by_reason"] == {"unstorable": 1}
    assert (s["spilled"], s["pending"], s["storage_down"]) == (0, 0, False)
    assert balanced(s)
    paths = {e["endpoint"] for e in leza.query.access(limit=100)}
    assert paths == {f"/r/{i}" for i in range(21)}


def test_a_spill_file_with_an_unstorable_event_still_replays_the_rest(
    make_leza: Any, tmp_path: Path, flaky_storage: FlakyStorage
) -> None:
    # Spilled while storage was down, refused for its content once it is back:
    # the rest of the file is replayed, not held back forever behind it.
    db = tmp_path / "replay.db"
    spill = tmp_path / "spill-poisoned"
    flaky_storage.down = True
    first = make_leza(storage=flaky_storage, spill_dir=str(spill), max_retries=0)
    for i in range(6):
        first.recorder.offer(raw(i))
    first.record(unstorable_advisory())
    first.shutdown(2)
    assert first.stats()["spilled"] == 7
    second = make_leza(storage=f"sqlite:///{db}", spill_dir=str(spill))
    second.recorder.offer(raw(100))
    assert second.flush(5)
    assert wait_for(lambda: second.stats()["replayed"] == 6)
    assert second.stats()["replay_refused"] == 1
    assert sqlite_count(db) == 7
    assert wait_for(lambda: not any(spill.glob("*.jsonl")))  # the file is done with


def test_storage_that_refuses_everything_is_down_not_picky(make_leza: Any, tmp_path: Path) -> None:
    # A refusal that is not about one event (here: SQLite told to insert into a
    # table that was dropped under it) must not drop the batch event by event.
    db = tmp_path / "gone.db"
    leza = make_leza(storage=f"sqlite:///{db}", flush_interval=60, max_retries=0)
    leza.recorder.offer(raw(0))
    assert leza.flush(5)
    with sqlite3.connect(db) as con:
        con.execute("drop table leza_access")
    for i in range(1, 41):
        leza.recorder.offer(raw(i))
    assert leza.flush(5)
    s = leza.stats()
    assert s["dropped"] == 0
    assert s["spilled"] == 40
    assert balanced(s)


class Exits(Rule):
    """App code on the recorder thread that calls sys.exit() (a library's fatal path)."""

    name = "exits"
    kinds = frozenset({"access"})

    def observe(self, event: Event, ctx: RuleContext) -> Iterable[Finding]:
        sys.exit("a rule gave up")


def test_app_code_on_the_recorder_thread_cannot_stop_it(make_leza: Any) -> None:
    leza = make_leza(advisory_rules=[Exits()], flush_interval=60)
    for i in range(30):
        leza.recorder.offer(raw(i))
    assert leza.flush(5)
    s = leza.stats()
    assert (s["written"], s["pending"], s["dropped"]) == (30, 0, 0)
    assert s["advisories"]["rule_errors"]["exits"] == 30
    assert leza.recorder.running


class FatalOnce(MemoryStorage):
    """A storage whose first write raises a BaseException, not an Exception."""

    def __init__(self) -> None:
        super().__init__()
        self.fatal = 1

    def write(self, events: Any) -> None:
        if self.fatal:
            self.fatal -= 1
            raise KeyboardInterrupt("storage driver interrupted")
        super().write(events)


def test_a_storage_raising_a_base_exception_is_a_failed_write(make_leza: Any) -> None:
    storage = FatalOnce()
    leza = make_leza(storage=storage, max_retries=2)
    for i in range(5):
        leza.recorder.offer(raw(i))
    assert leza.flush(5)
    s = leza.stats()
    assert (s["written"], s["retried"], s["storage_errors"], s["pending"]) == (5, 1, 1, 0)
    assert leza.recorder.running


def test_a_bug_mid_batch_leaves_nothing_pending_for_ever(
    make_leza: Any, flaky_storage: FlakyStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug cannot be caused from outside: an internal step that raises stands in.
    leza = make_leza(storage=flaky_storage, max_retries=0)
    flaky_storage.down = True

    def broken() -> None:
        raise RuntimeError("a bug in the recorder")

    monkeypatch.setattr(leza.recorder, "_mark_down", broken)
    for i in range(4):
        leza.recorder.offer(raw(i))
    assert leza.flush(5)  # settled, not pending until the timeout
    s = leza.stats()
    assert (s["spilled"], s["pending"]) == (4, 0)
    assert balanced(s)
    assert leza.recorder.running


@pytest.mark.both_databases
def test_an_unstorable_event_alone_in_its_batch_is_dropped_not_a_storage_outage(
    make_leza: Any, storage_url: str
) -> None:
    # Quiet traffic: the bad event is its batch. A refusal about the value itself
    # needs no other write to prove it: dropped, and storage is not marked down.
    leza = make_leza(storage=storage_url, max_retries=2)
    leza.record(unstorable_advisory())
    assert leza.flush(5)
    s = leza.stats()
    assert s["dropped_by_reason"] == {"unstorable": 1}
    assert (s["spilled"], s["retried"], s["storage_down"]) == (0, 0, False)
    leza.recorder.offer(raw(1))
    assert leza.flush(5)
    assert leza.stats()["written"] == 1
    assert balanced(leza.stats())


def test_a_spill_file_of_only_unstorable_events_does_not_hold_back_later_ones(
    make_leza: Any, tmp_path: Path, flaky_storage: FlakyStorage
) -> None:
    db = tmp_path / "later.db"
    spill = tmp_path / "spill-alone"
    flaky_storage.down = True
    first = make_leza(storage=flaky_storage, spill_dir=str(spill), max_retries=0)
    first.record(unstorable_advisory())  # its own spill file, first in line
    first.shutdown(2)
    second = make_leza(storage=flaky_storage, spill_dir=str(spill), max_retries=0)
    for i in range(3):
        second.recorder.offer(raw(i))
    second.shutdown(2)
    assert len(list(spill.glob("*.jsonl"))) == 2
    third = make_leza(storage=f"sqlite:///{db}", spill_dir=str(spill))
    third.recorder.offer(raw(100))
    assert third.flush(5)
    assert wait_for(lambda: third.stats()["replayed"] == 3)
    assert third.stats()["replay_refused"] == 1
    assert sqlite_count(db) == 4
    assert wait_for(lambda: not any(spill.glob("*.jsonl")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc")
def test_the_recorder_thread_is_named_for_the_os_without_importing_in_it(make_leza: Any) -> None:
    """``leza-recorder`` in top -H and /proc; the lookup of prctl (an import of
    ctypes) happens before the thread starts: an import in the new thread racing
    a fork (gunicorn --preload forks as the master's recorder starts) left the
    child's recorder blocked on ctypes' import lock for ever."""
    from leza_middleware import recorder as recorder_module

    leza = make_leza(flush_interval=0.05)
    leza.recorder.offer(raw(1))
    assert recorder_module._prctl_loaded  # looked up by the starting thread
    thread = leza.recorder._thread
    assert thread is not None
    assert wait_for(
        lambda: Path(f"/proc/self/task/{thread.native_id}/comm").read_text() == "leza-recorder\n"
    )
