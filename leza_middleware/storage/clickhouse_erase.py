"""Erasure (``leza forget``) on ClickHouse: one person's access events,
advisories and log records (theirs, and those written in their requests)
deleted, and their identifiers scrubbed from other rows' free text — the
ClickHouse side of :func:`leza_middleware.storage.sql_erase.forget_performer`.

ClickHouse deletes and updates rows with mutations (``ALTER TABLE … DELETE`` /
``UPDATE``, on each shard's own tables: a ``Distributed`` table takes no
``ALTER``, and ``ON CLUSTER`` needs ZooKeeper). A mutation runs in the
background; erasure waits until every one it started is done
(``system.mutations``), so when ``forget`` returns the rows are gone. Every
copy of a replayed event is deleted or rewritten alike (the conditions name
the person or the event id, never one copy).

STATE's traffic: the hours the person's access rows were deleted from count
one more write (:func:`.clickhouse_traffic.hours_changed`), so they are read
live and settled again without them; hours already purged keep their
settlement. The settled rollups hold counts per endpoint and minute, nothing
about anyone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..performer import Performer
from ..state.traffic import HOUR
from .clickhouse_traffic import floor_sql, hours_changed

if TYPE_CHECKING:
    from .clickhouse import ClickHouseStorage

__all__ = ["forget_performer", "performer_identities"]

#: Request ids (and rewritten rows) per mutation: each mutation's text is kept
#: by the server (``system.mutations``), so not unbounded.
CHUNK = 2_000
#: Free-text columns scrubbed, per table; the JSON ones rewritten as JSON.
_TEXT = {
    "leza_access": (("endpoint", "reason"), ()),
    "leza_log": (("message", "exception"), ()),
    "leza_advisory": (("message", "details"), ("details",)),
}
_MIN_SCRUB = 4  # as privacy.forget: shorter identifiers are matched as whole ids only


def performer_identities(storage: ClickHouseStorage, performer_id: str) -> list[Performer]:
    """Every identity the access rows hold for ``performer_id`` (the performer
    JSON is stored in each row)."""
    storage.ensure_ready()
    rows = storage.execute(
        f"SELECT DISTINCT performer FROM {storage.table('leza_access')} "
        "WHERE performer_id = %(p)s AND performer IS NOT NULL",
        {"p": performer_id},
    )
    found: dict[str, Performer] = {}
    for (text,) in rows:
        p = Performer.from_dict(json.loads(text))
        if p.id == performer_id:
            found[p.to_json()] = p
    return list(found.values())


def _count(storage: ClickHouseStorage, table: str, cond: str, params: dict[str, Any]) -> int:
    sql = f"SELECT count() FROM (SELECT DISTINCT id FROM {storage.table(table)} WHERE {cond})"
    return sum(int(r[0]) for r in storage._read(sql, params))


def _chunks(values: Sequence[Any]) -> list[Sequence[Any]]:
    return [values[i : i + CHUNK] for i in range(0, len(values), CHUNK)]


def forget_performer(
    storage: ClickHouseStorage, performer_id: str, identifiers: Sequence[str]
) -> dict[str, int]:
    """Erase ``performer_id`` from the access, log and advisory tables; counts
    as :meth:`Storage.forget_performer` (distinct events)."""
    from ..privacy import compile_identifiers

    storage.ensure_ready()
    p = {"p": performer_id}
    # Every condition on a Nullable column is wrapped in ifNull: 18.16 applies
    # ALTER … DELETE to the rows where its condition is NULL too (a row without
    # a performer would be deleted by ``performer_id = 'x'``).
    mine = "ifNull(performer_id, '') = %(p)s"
    # Their requests first, while their access rows still say which were theirs
    # (a log record written before the app knew who was signed in carries the
    # request id only). Sharded, a request's log records may be on another shard.
    rids = sorted(
        str(r)
        for (r,) in storage.execute(
            f"SELECT DISTINCT request_id FROM {storage.table('leza_access')} "
            f"WHERE {mine} AND request_id != ''",
            p,
        )
    )
    counts = {
        "access": _count(storage, "leza_access", mine, p),
        "advisories": _count(storage, "leza_advisory", mine, p),
        "logs": _count(storage, "leza_log", mine, p),
        "sessions": 0,  # sessions and identity rows live in SQL
        "performers": 0,
    }
    others = "ifNull(request_id, '') IN %(r)s AND ifNull(performer_id, '') != %(p)s"  # not yet
    for chunk in _chunks(rids):
        counts["logs"] += _count(storage, "leza_log", others, {**p, "r": tuple(chunk)})
    for shard in storage.shards():
        access = storage.local("leza_access")
        hours = [
            int(h)
            for (h,) in storage.execute(
                f"SELECT DISTINCT {floor_sql('ts', HOUR)} FROM {access} WHERE {mine}",
                p,
                shard=shard,
            )
        ]
        log = storage.local("leza_log")
        for chunk in _chunks(rids):
            theirs = "ifNull(request_id, '') IN %(r)s"
            storage.execute(
                f"ALTER TABLE {log} DELETE WHERE {theirs}", {"r": tuple(chunk)}, shard=shard
            )
        for table in ("leza_log", "leza_advisory", "leza_access"):
            storage.execute(f"ALTER TABLE {storage.local(table)} DELETE WHERE {mine}", p,
                            shard=shard)  # fmt: skip
        for table in ("leza_log", "leza_advisory", "leza_access"):
            storage.wait_mutations(storage.local(table), shard)
        hours_changed(storage, shard, hours)
    rx = compile_identifiers(identifiers)
    counts["scrubbed"] = 0 if rx is None else _scrub(storage, identifiers, rx)
    return counts


def _scrub(storage: ClickHouseStorage, identifiers: Sequence[str], rx: Any) -> int:
    """Other rows' free text: candidates found by the server (case-insensitive
    substring), rewritten in Python by the same rules as every backend, then
    updated by id on every shard."""
    from ..privacy import scrub_json, scrub_text

    idents = sorted({i for i in identifiers if len(i) >= _MIN_SCRUB})
    if not idents:
        return 0
    scrubbed = 0
    for table, (cols, as_json) in _TEXT.items():
        params = {f"i{n}": ident for n, ident in enumerate(idents)}
        hits = " OR ".join(
            f"positionCaseInsensitiveUTF8(ifNull({c}, ''), %(i{n})s) > 0"
            for c in cols
            for n in range(len(idents))
        )
        rows = storage._read(
            f"SELECT id, {', '.join(cols)} FROM {storage.table(table)} WHERE {hits} LIMIT 1 BY id",
            params,
        )
        changed: dict[str, dict[str, str]] = {c: {} for c in cols}
        touched: set[str] = set()
        for row_id, *values in rows:
            for c, old in zip(cols, values, strict=True):
                if old is None:
                    continue
                if c in as_json:
                    new = json.dumps(scrub_json(json.loads(old), rx), ensure_ascii=False,
                                     default=str)  # fmt: skip
                    if json.loads(new) == json.loads(old):
                        continue
                else:
                    new = str(scrub_text(old, rx))
                if new != old:
                    changed[c][row_id] = new
                    touched.add(row_id)
        if not touched:
            continue
        for shard in storage.shards():
            local = storage.local(table)
            for c in cols:
                ids = sorted(changed[c])
                for chunk in _chunks(ids):
                    values = [changed[c][i] for i in chunk]
                    storage.execute(
                        f"ALTER TABLE {local} UPDATE {c} = transform(id, %(ids)s, %(v)s, '') "
                        "WHERE id IN %(t)s",
                        {"ids": list(chunk), "v": values, "t": tuple(chunk)},
                        shard=shard,
                    )
            storage.wait_mutations(local, shard)
        scrubbed += len(touched)
    return scrubbed
