"""What reads the ClickHouse backend — ``leza export``/``tail``/``purge``, the
admin view's API, STATE's traffic (exact under replays, kept through purges,
racing settlements) — and a shard killed mid-write, on real servers (see
test_storage_clickhouse.py for the servers and the backend's own contract)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from test_storage import ev
from test_storage_clickhouse import LONG_ROUTE_LABEL, T0, dataset, hostile_access, merges

from leza_middleware.events import AccessEvent, AdvisoryEvent, Event, LogEvent
from leza_middleware.storage import Capability, QueryFilter
from leza_middleware.storage.clickhouse import ClickHouseStorage

pytest.importorskip("clickhouse_driver", reason="the [clickhouse] extra is not installed")


# ----------------------------------------------------------------------------- the CLI


def test_export_tail_and_purge_from_the_command_line(
    clickhouse_storage: ClickHouseStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from leza_middleware.cli import main

    ch = clickhouse_storage
    url = ch.url.describe()
    events = hostile_access()[:1] + [ev(n, ts=T0 + n) for n in range(2, 8)]
    ch.write(events)
    ch.write(events[:4])  # replayed: exported once
    ch.write([LogEvent(id="l1", ts=T0, level=40, logger="app", message="boom\x00")])

    assert main(["export", "--storage", url, "--kind", "access", "--page-size", "3"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")  # JSON Lines: "\n" only
    assert [json.loads(line) for line in lines] == [
        e.to_dict() for e in ch.query("access", QueryFilter(limit=100)).events
    ]
    assert len(lines) == 7
    assert main(["export", "--storage", url, "--kind", "log", "--format", "csv"]) == 0
    assert "l1,log,2026-01-01T00:00:00.000000Z,error,40,app,boom" in capsys.readouterr().out
    assert main(["tail", "--storage", url, "-n", "2", "--format", "jsonl"]) == 0
    tailed = [json.loads(line)["_id"] for line in capsys.readouterr().out.splitlines()]
    assert tailed == ["e000006", "e000007"]  # the newest, oldest first
    assert main(["export", "--storage", url, "--kind", "audit"]) == 2
    assert "keeps no audit events" in capsys.readouterr().err
    assert main(["purge", "--storage", url, "--kind", "access", "--older-than", "1d", "-y"]) == 0
    capsys.readouterr()
    assert ch.count("access", QueryFilter()) == 0  # 2026-01-01 is more than a day ago


# ----------------------------------------------------------------------------- the admin view


def test_the_admin_views_api_pages_like_on_sqlite(
    clickhouse_storage: ClickHouseStorage, make_leza: Any
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from leza_middleware.dashboard import make_asgi_app

    events = [e for e in dataset(7) if e.kind in ("access", "log")]
    answers = []
    for spec in (clickhouse_storage.url.describe(), None):  # ClickHouse, then SQLite
        # ClickHouse keeps the access and log streams; sessions and audit elsewhere.
        by_kind = {"access": spec, "log": spec, "default": "memory://"}
        leza = make_leza() if spec is None else make_leza(storage=by_kind)
        leza.storage.write(events)
        leza.storage.write(events[::4])  # a replay
        app = Starlette(routes=[Mount("/leza", make_asgi_app(leza, lambda r: True))])
        seen = []
        with TestClient(app) as admin:
            # (without FROM/TO the view shows the last days: these events are older)
            for query in (
                "limit=25",
                "from=2026-01-20&to=2026-02-10&action=denied&limit=4",
                "performer=u-1&limit=9",
                f"endpoint={LONG_ROUTE_LABEL}&limit=3",
            ):
                if not query.startswith("from="):
                    query += "&from=2025-12-01&to=2026-06-01"
                cursor, pages = "", 0
                while True:  # every page, by the cursors the API hands out
                    r = admin.get(f"/leza/api/access?{query}&cursor={cursor}")
                    assert r.status_code == 200, r.text
                    body = r.json()
                    seen.append(body)
                    pages += 1
                    if not body["next_cursor"]:
                        break
                    cursor = body["next_cursor"]
                assert pages > 1, query  # the query set does page
            r = admin.get("/leza/api/logs?action=error&limit=5&from=2025-12-01")
            assert r.status_code == 200, r.text
            assert r.json()["items"]
            seen.append(r.json())
        answers.append(seen)
    assert answers[0] == answers[1]


# ----------------------------------------------------------------------------- STATE's traffic


def traffic_events(base: int) -> list[AccessEvent]:
    """The rollup suite's edge cases, and a few thousand ordinary requests."""
    from test_rollups import event, tricky_events

    rng = random.Random(5)
    bulk = [
        event(base + rng.randrange(0, 5 * 86_400_000_000), method=rng.choice(["GET", "POST", "X"]),
              route=rng.choice(["/a", "/b/{id}", None]), status=rng.choice([200, 404, 500, 403]),
              outcome=rng.choice(["success", "failure", "error", "denied"]),
              duration_us=rng.randrange(0, 3_000_000),
              action=rng.choice(["access", "login", "login_failed"]))
        for _ in range(3000)
    ]  # fmt: skip
    return tricky_events(base) + bulk


WINDOWS = [  # (since offset, until offset, bucket seconds) from the base, in µs
    (0, 3 * 3_600_000_000 - 1, 60),
    (90_000_000, 86_400_000_000 + 7, 3600),
    (0, 5 * 86_400_000_000, 86_400),
    (2 * 86_400_000_000 + 1, 4 * 86_400_000_000 + 30 * 60_000_000, 3600),
]


def test_traffic_is_exact_before_and_after_purges(ch_any: ClickHouseStorage) -> None:
    from leza_middleware.storage import MemoryStorage

    ch, reference = ch_any, MemoryStorage()  # the memory backend's rollups
    base = T0 + 12 * 3_600_000_000 + 17
    events = traffic_events(base)
    reference.write(events)
    ch.setup()
    merges(ch, "leza_access", on=False)  # the copies stay in the table
    for start in range(0, len(events), 500):
        ch.write(events[start : start + 500])
    ch.write(events[::5])  # replayed

    def same(note: str) -> None:
        for since, until, bucket in WINDOWS:
            want = reference.traffic(base + since, base + until, bucket)
            assert ch.traffic(base + since, base + until, bucket) == want, (note, since, bucket)

    same("live")
    assert ch.traffic(base, base + 5 * 86_400_000_000, 86_400).totals.requests == len(events)
    # (a purge deletes through a mutation, which runs in the merge pool)
    merges(ch, "leza_access", on=True)
    # Purge the first two and a half days: their traffic is settled, then the rows go.
    cut = base + 2 * 86_400_000_000 + 12 * 3_600_000_000 + 123
    assert ch.purge("access", cut) == reference.purge("access", cut)
    same("after an access purge")
    # a second purge (from another process) settles only the hours not settled yet
    other = ClickHouseStorage(ch.url)
    try:
        cut2 = cut + 5 * 3_600_000_000
        assert other.purge("access", cut2) == reference.purge("access", cut2)
    finally:
        other.close()
    same("after a second purge")
    # Rollup retention: the hours before its cut go, the rest stays exact.
    cut3 = base + 86_400_000_000
    assert ch.purge("traffic", cut3) > 0
    reference.purge("traffic", cut3)
    same("after a traffic purge")
    assert ch.supports(Capability.ROLLUPS)


def test_a_late_replay_into_a_settled_hour_is_not_counted_again(
    clickhouse_storage: ClickHouseStorage,
) -> None:
    from test_rollups import event

    ch = clickhouse_storage
    base = T0 + 5 * 3_600_000_000
    events = [event(base + i * 1_000_000, duration_us=i) for i in range(50)]
    ch.write(events)
    before = ch.traffic(base, base + 3_600_000_000 - 1, 3600)
    assert before.totals.requests == 50
    assert ch.purge("access", base + 10_000_000) == 10  # settles the hour
    ch.write(events[:20])  # a spill replayed after the purge: 10 purged ids, 10 kept
    assert ch.traffic(base, base + 3_600_000_000 - 1, 3600) == before


def test_a_settlement_racing_a_purge_never_undercounts(
    clickhouse_storage: ClickHouseStorage,
) -> None:
    from test_rollups import event

    from leza_middleware.storage.clickhouse_traffic import settle_before

    ch = clickhouse_storage
    base = T0 + 7 * 3_600_000_000
    ch.write([event(base + i * 1_000_000, duration_us=1000 * i) for i in range(600)])
    hour = ch.traffic(base, base + 3_600_000_000 - 1, 60)
    # settles the hour, deletes five and a half minutes of its ten
    assert ch.purge("access", base + 330 * 1_000_000) == 330
    # Another process that read "not settled" before that purge marked the hour
    # settles it again from what is left: minute 5 has the same key, fewer requests.
    ch.execute(f"SYSTEM STOP MERGES `{ch.database}`.leza_traffic_settled")  # keep both settlements
    ch.execute(f"ALTER TABLE `{ch.database}`.leza_traffic_marks DELETE WHERE 1")
    ch.wait_mutations("leza_traffic_marks")
    assert settle_before(ch, base + 3_600_000_000) == 1
    rows, keys = ch.execute(
        "SELECT count(), uniqExact(minute, method, route) "
        f"FROM `{ch.database}`.leza_traffic_settled"
    )[0]
    assert rows > keys  # both settlements are in the table
    assert ch.traffic(base, base + 3_600_000_000 - 1, 60) == hour


def test_state_on_clickhouse_equals_state_on_memory(clickhouse_storage: ClickHouseStorage) -> None:
    from leza_middleware.state.build import build_state
    from leza_middleware.storage import MemoryStorage

    base = T0 + 12 * 3_600_000_000 + 17
    events: list[Event] = [*traffic_events(base)]
    events += [
        AdvisoryEvent(id=f"A{n}", ts=base + n * 600_000_000, rule=("burst", "new_machine")[n % 2],
                      severity=("high", "low", "critical")[n % 3], message=f"m{n}",
                      performer_id="u-1")
        for n in range(40)
    ]  # fmt: skip
    memory = MemoryStorage()
    for storage in (memory, clickhouse_storage):
        storage.write(events)
    clickhouse_storage.write(events[:700])  # a replay
    for since, until in ((base, base + 86_400_000_000), (base + 3 * 3_600_000_000, base + 4 *
                                                         3_600_000_000)):  # fmt: skip
        now = until + 1
        want = build_state(memory, since, until, now=now)
        got = build_state(clickhouse_storage, since, until, now=now)
        for part in ("recorder",):  # the storage's description and kind
            want.pop(part)
            got.pop(part)
        assert got == want
        assert got["traffic"]["kept"]
        assert got["requests"] > 0
        assert got["advisories"]


# ----------------------------------------------------------------------------- a shard down


@pytest.fixture
def own_shards(clickhouse_urls: tuple[str, str]) -> Iterator[list[Any]]:
    """Two servers of this test's own (one of them gets killed)."""
    from clickhouse_server import find_server, start_servers

    command = find_server()
    if command is None:  # the session's servers came from CI's environment
        pytest.skip("no ClickHouse server binary to start two more servers with")
    servers = start_servers(command)
    yield servers
    for server in servers:
        server.stop()


def test_a_shard_down_fails_the_batch_and_its_replay_loses_nothing(own_shards: list[Any]) -> None:
    first, second = own_shards
    ch = ClickHouseStorage(f"clickhouse://127.0.0.1:{first.tcp_port}/leza?cluster=leza_shards")
    try:
        ch.write([ev(n) for n in range(100)])
        second.kill()
        batch = [ev(n) for n in range(100, 200)]
        with pytest.raises(Exception, match=r"(?i)connect|refused|network|socket"):
            ch.write(batch)  # the recorder retries, then spills it
        with pytest.raises(Exception, match=r"(?i)connect|refused|network|socket"):
            ch.query("access", QueryFilter())  # never a silent half answer
        second.restart()
        ch.write(batch)  # the replay: the rows the live shard took already are folded
        for shard in ch.shards():  # both shards hold events
            assert ch.execute(f"SELECT count() FROM {ch.local('leza_access')}", shard=shard)[0][0]
        assert ch.count("access", QueryFilter()) == 200
        got = [e.id for e in ch.query("access", QueryFilter(limit=1000)).events]
        assert got == [f"e{n:06d}" for n in range(199, -1, -1)]
    finally:
        ch.close()
