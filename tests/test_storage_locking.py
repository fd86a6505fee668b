"""Several app processes write the same sessions (a session's requests spread
over gunicorn's workers): on PostgreSQL each batch's upserts lock the session
rows they touch, so two batches naming the same sessions in other orders
deadlocked ("DeadlockDetected … inserting index tuple in relation
leza_session", seen with 4 workers). The writer takes the rows in key order,
so another writer never waits for one it holds while holding one it wants.

Caused for real: another transaction holds one session row and, once the
writer waits for it, asks for the row the batch names first."""

from __future__ import annotations

import threading
import time

import psycopg
from conftest import postgres_schema
from sqlalchemy.engine import make_url
from test_storage import T0

from leza_middleware.events import SessionEvent
from leza_middleware.storage import QueryFilter, SQLStorage


def _change(n: int, action: str, session_id: str, ts: int) -> SessionEvent:
    return SessionEvent(id=f"S{n:04d}", ts=ts, action=action, session_id=session_id)


def test_session_upserts_lock_rows_in_key_order(postgres_url: str) -> None:
    with postgres_schema(postgres_url) as url:
        storage = SQLStorage(url)
        try:
            storage.write([_change(1, "session_start", "s-a", T0),
                           _change(2, "session_start", "s-b", T0)])  # fmt: skip
            plain = make_url(url).set(drivername="postgresql").render_as_string(False)
            with psycopg.connect(plain) as other:
                other.execute("SET deadlock_timeout = '200ms'")
                other.execute("UPDATE leza_session SET last_seen = last_seen WHERE id = 's-a'")
                failures: list[BaseException] = []

                def write() -> None:
                    # "s-b" first: unsorted, the writer would hold s-b while waiting for s-a.
                    try:
                        storage.write([_change(3, "session_seen", "s-b", T0 + 10),
                                       _change(4, "session_seen", "s-a", T0 + 20)])  # fmt: skip
                    except BaseException as exc:  # reported below
                        failures.append(exc)

                writer = threading.Thread(target=write)
                writer.start()
                deadline = time.monotonic() + 30
                while True:  # until the writer waits for the row ``other`` holds
                    with psycopg.connect(plain, autocommit=True) as watch:
                        waiting = watch.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND datname = current_database() AND pid <> %s",
                            (other.info.backend_pid,),
                        ).fetchone()
                    if waiting is not None and waiting[0] >= 1:
                        break
                    assert writer.is_alive(), f"the writer did not wait for s-a: {failures}"
                    assert time.monotonic() < deadline, "the writer never reached s-a"
                    time.sleep(0.05)
                # The writer holds nothing that this wants: no deadlock, no victim.
                other.execute("UPDATE leza_session SET last_seen = last_seen WHERE id = 's-b'")
                other.commit()
                writer.join(30)
            assert not writer.is_alive()
            assert failures == []
            page = storage.query("session", QueryFilter(limit=10))
            assert {r.id: r.last_seen for r in page.events} == {
                "s-a": T0 + 20,
                "s-b": T0 + 10,
            }
        finally:
            storage.close()
