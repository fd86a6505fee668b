"""Prometheus metrics: what they cost the recorder thread, per event, side by side.

The metrics are fed on the recorder thread (``Recorder.add_observer``) from the
batches of prepared events it writes anyway; this measures, per access event:

* the recorder's own work without metrics: enrichment (warm caches) + SQLite write;
* the metrics observer (``LezaMetrics``) on the same batches: in one process
  (prometheus_client's in-memory values) and in multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR``: every value write is an mmap write); its
  groups applied every 20 batches (steady load of ~20,000 requests/s: the
  recorder applies at most every 0.5 s) and after every batch (the worst case);
* for comparison, the naive way: ``labels(...).inc()`` and ``observe()`` per event.

Each variant runs in its own subprocess (prometheus_client picks its value
class at import, from the environment); runs are interleaved, several of each.
Times are the measuring thread's CPU time (``time.thread_time_ns``), so that
other processes on a shared machine inflate them less than wall time would.
A realistic mix: 20 route templates plus 404s, 4 outcomes, latencies spread
over the buckets, batches of 512 as the recorder takes them.

    python bench/bench_metrics.py [--runs 5] [--events 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 512
ROUTES = [f"/api/v1/resource{i}/{{id}}" for i in range(20)]
METHODS = ["GET"] * 6 + ["POST", "PUT", "DELETE"]
STATUSES = [200] * 20 + [201, 204, 301, 400, 401, 403, 404, 500, 503]


def _events(leza: Any, n: int) -> list[Any]:
    from leza_middleware.request_path import raw_access

    rng = random.Random(7)
    now = time.time()
    raws = []
    for i in range(n):
        matched = rng.random() < 0.9
        raws.append(
            raw_access(
                ts=now + i * 1e-4,
                duration=10 ** rng.uniform(-3.5, 0.5),  # 0.3 ms .. 3 s
                request_id=f"{i:032x}",
                peer="127.0.0.1",
                user_agent=b"Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 Safari/537.36",
                method=rng.choice(METHODS),
                path=f"/api/v1/x/{i % 100}",
                status=rng.choice(STATUSES) if matched else 404,
                route=rng.choice(ROUTES) if matched else None,
            )
        )
    events: list[Any] = []
    for k in range(0, n, BATCH):
        events += leza._prepare_batch(raws[k : k + BATCH])
    return events


def _child(variant: str, n: int) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from leza_middleware import Leza
    from leza_middleware.metrics import outcome_of, register

    with tempfile.TemporaryDirectory() as tmp:
        leza = Leza(
            storage=f"sqlite:///{Path(tmp) / 'bench.db'}",
            geoip_db=False,
            spill_dir=str(Path(tmp) / "spill"),
            flush_interval=3600,
            secret_key="bench-secret-key-0123456789",
        )
        _events(leza, BATCH)  # warm the caches, like steady traffic
        t0 = time.thread_time_ns()
        events = _events(leza, n)
        enrich = (time.thread_time_ns() - t0) / n / 1000
        batches = [events[k : k + BATCH] for k in range(0, n, BATCH)]
        out = {"enrich": enrich}
        if variant == "recorder":
            leza.storage.setup()
            t0 = time.thread_time_ns()
            for batch in batches:
                leza.storage.write(batch)
            out["write"] = (time.thread_time_ns() - t0) / n / 1000
        elif variant.startswith("metrics"):
            from leza_middleware.metrics import feed as feed_module

            # Applied every `every` batches (the recorder applies at most every
            # 0.5 s: at 20,000 requests/s that is every ~20 batches of 512).
            every = int(variant.split("-")[1])
            feed_module._APPLY_INTERVAL = 0.0
            feed = register(leza, CollectorRegistry())
            feed(batches[0])  # the label children exist in steady state
            feed(())
            t0 = time.thread_time_ns()
            for i, batch in enumerate(batches, 1):
                feed(batch)
                if i % every == 0:
                    feed(())
            feed(())
            out["observer"] = (time.thread_time_ns() - t0) / n / 1000
        else:  # naive: one inc() and one observe() per event
            registry = CollectorRegistry()
            labels = ("app", "method", "route", "outcome")
            requests = Counter("naive_requests", "x", labels, registry=registry)
            duration = Histogram("naive_duration_seconds", "x", labels, registry=registry)
            t0 = time.thread_time_ns()
            for batch in batches:
                for e in batch:
                    outcome = outcome_of(e.outcome, e.status)
                    key = ("app", e.method, e.route or "(unmatched)", outcome)
                    requests.labels(*key).inc()
                    duration.labels(*key).observe(e.duration_us / 1_000_000)
            out["observer"] = (time.thread_time_ns() - t0) / n / 1000
        leza.shutdown(5)
        return out


VARIANTS = {
    "recorder": "recorder without metrics (enrich + SQLite write)",
    "metrics-20": "LezaMetrics, one process, applied every 20 batches",
    "metrics-20-multiprocess": "LezaMetrics, multiprocess, applied every 20 batches",
    "metrics-1": "LezaMetrics, one process, applied after every batch",
    "metrics-1-multiprocess": "LezaMetrics, multiprocess, applied after every batch",
    "naive": "naive: labels().inc() + observe() per event, one process",
    "naive-multiprocess": "naive: labels().inc() + observe() per event, multiprocess",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--child", choices=sorted(VARIANTS))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child.removesuffix("-multiprocess"), args.events)))
        return
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.runs):
        for variant in VARIANTS:
            env = dict(os.environ)
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            with tempfile.TemporaryDirectory() as prom:
                if variant.endswith("multiprocess"):
                    env["PROMETHEUS_MULTIPROC_DIR"] = prom
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", variant, "--events", str(args.events)],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
            results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"CPU µs per access event, {args.runs} runs of {args.events:,} events (median, min-max):")
    for variant, label in VARIANTS.items():
        runs = results[variant]
        key = "write" if variant == "recorder" else "observer"
        values = [r[key] for r in runs]
        line = (
            f"  {label:<62} {statistics.median(values):6.2f}  ({min(values):.2f}-{max(values):.2f})"
        )
        if variant == "recorder":
            enrich = [r["enrich"] for r in runs]
            line = (
                f"  {'recorder without metrics: enrichment':<62} {statistics.median(enrich):6.2f}"
                f"  ({min(enrich):.2f}-{max(enrich):.2f})\n"
                f"  {'recorder without metrics: SQLite write':<62} "
                f"{statistics.median(values):6.2f}  ({min(values):.2f}-{max(values):.2f})"
            )
        print(line)


if __name__ == "__main__":
    main()
