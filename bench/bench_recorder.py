"""The recorder's own cost per event, without enrichment or storage: ``offer()``
on the request side, then the worker's queue, batch and write path (the books,
the listeners, the retry loop) into a storage that only counts.

CPU time of the process (both threads) per event, which a busy shared machine
disturbs far less than wall time; best and median of several rounds.

    python bench/bench_recorder.py [--rounds 7] [--events 200000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from leza_middleware.events import AccessEvent, Event
from leza_middleware.recorder import Recorder
from leza_middleware.spill import Spill
from leza_middleware.storage.base import Storage


class CountingStorage(Storage):
    """Takes every batch and keeps only the count."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, events: Sequence[Event]) -> None:
        self.count += len(events)

    def query(self, kind: str, flt: Any) -> Any:  # pragma: no cover - not read here
        raise NotImplementedError


def event(i: int) -> AccessEvent:
    return AccessEvent.build(
        id=f"{i:032x}", ts=1_767_000_000_000_000 + i, action="access", method="GET",
        endpoint="/", route="/", status=200, duration_us=100, outcome="success", reason="",
        request_id=f"r{i}", client_ip="81.2.69.142", ip_valid=True, peer_ip="127.0.0.1",
    )  # fmt: skip


def one_round(events: list[AccessEvent], spill_dir: str) -> float:
    storage = CountingStorage()
    rec = Recorder(
        storage,
        lambda item: item,
        Spill(spill_dir),
        prepare_batch=list,
        batch_size=512,
        flush_interval=3600,  # woken by full batches, as under steady traffic
        queue_size=len(events) + 1,
    )
    try:
        t0 = time.process_time_ns()
        offer = rec.offer
        for e in events:
            offer(e)
        assert rec.flush(60)
        cpu = time.process_time_ns() - t0
    finally:
        rec.shutdown(5)
    stats = rec.stats()
    assert storage.count == len(events) == stats["written"], (storage.count, stats)
    return cpu / len(events) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    events = [event(i) for i in range(args.events)]
    with tempfile.TemporaryDirectory() as tmp:
        one_round(events[:5000], tmp)  # warm up
        runs = [one_round(events, tmp) for _ in range(args.rounds)]
    print(
        f"recorder offer + queue + batch + write path, CPU per event: "
        f"median {statistics.median(runs):.3f} µs, best {min(runs):.3f} µs "
        f"({args.rounds} rounds of {args.events:,}; all: {', '.join(f'{r:.3f}' for r in runs)})"
    )


if __name__ == "__main__":
    main()
