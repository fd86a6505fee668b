"""CPU time per event of ``SQLStorage.write``, alternating code trees.

    python bench/bench_write_cpu.py [-n 100000] [--batch 500] [--rounds 3]
        [--tree NAME=PATH ...] [--postgres URL]

Writes N realistic access events (bench_storage.py's generator: ~300
User-Agents, ~200 networks, a few dozen performers; rollups included) in
batches to a fresh SQLite file through ``SQLStorage.write`` and reports
``time.thread_time()`` per event: the CPU the recorder thread spends, which is
what it takes from the app on a shared core. Wall time is printed too but is
unreliable on a busy machine.

``--app-thread``: each child is pinned to one CPU and runs a CPU-bound Python
thread (the "app") beside the writes, as a recorder shares the GIL and the
core with the app it serves; it also prints how much of that thread's work the
writes took, in µs of the app's time per event (its rate alone, measured just
before, times the write's wall time, minus what it did meanwhile). This
includes the cost of handing the GIL back and forth, which the writer's CPU
time does not show.

Each ``--tree NAME=PATH`` is a directory holding a ``leza_middleware`` package
(e.g. ``git archive main leza_middleware | tar -x -C /tmp/main``); every round
runs each tree once, in a fresh subprocess, alternating, so drift of the
machine's load hits all trees alike. Without ``--tree`` it compares nothing
and measures this checkout. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _work() -> int:
    """One unit of the stand-in app's work (pure Python, holds the GIL)."""
    d = {}
    for i in range(50):
        d[str(i)] = i * 2
    return len(d)


def child(src: str, n: int, batch: int, postgres: str | None, app_thread: bool) -> None:
    """One measurement in this process with ``src``'s leza_middleware."""
    sys.path.insert(0, src)
    import leza_middleware  # first, so bench_storage's sys.path insert is moot

    sys.path.insert(1, str(HERE))
    import gc
    import threading

    from bench_storage import batches, make_events

    from leza_middleware.storage import SQLStorage

    events = make_events(n)
    chunks = batches(events, batch)
    with tempfile.TemporaryDirectory() as tmp:
        url = postgres or f"sqlite:///{os.path.join(tmp, 'leza.db')}"
        storage = SQLStorage(url)
        storage.setup()
        stop = threading.Event()
        done = [0]
        app = threading.Thread(target=lambda: None)
        alone = 0.0
        if app_thread:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
            k, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 1.0:
                _work()
                k += 1
            alone = k / (time.perf_counter() - t0)

            def run_app() -> None:
                k = 0
                while not stop.is_set():
                    _work()
                    k += 1
                done[0] = k

            app = threading.Thread(target=run_app)
        gc.collect()
        app.start()
        c0, w0 = time.thread_time(), time.perf_counter()
        for chunk in chunks:
            storage.write(chunk)
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        stop.set()
        app.join()
        storage.close()
    loaded = str(Path(leza_middleware.__file__).resolve().parent.parent)
    lost = (alone * wall - done[0]) / alone / n * 1e6 if app_thread else None
    print(
        json.dumps(
            {"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6, "app_lost_us": lost, "src": loaded}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH")
    parser.add_argument("--postgres", default=None, help="a scratch PostgreSQL database URL")
    parser.add_argument("--app-thread", action="store_true", help="a CPU-bound app beside")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.batch, args.postgres, args.app_thread)
        return
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(HERE.parent)]]
    results: dict[str, list[float]] = {name: [] for name, _ in trees}
    lost: dict[str, list[float]] = {name: [] for name, _ in trees}
    for rnd in range(args.rounds):
        for name, path in trees:
            cmd = [sys.executable, __file__, "--child", path, "-n", str(args.n)]
            cmd += ["--batch", str(args.batch)]
            if args.postgres:
                cmd += ["--postgres", args.postgres]
            if args.app_thread:
                cmd.append("--app-thread")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results[name].append(r["cpu_us"])
            app = ""
            if r["app_lost_us"] is not None:
                lost[name].append(r["app_lost_us"])
                app = f", app lost {r['app_lost_us']:6.2f} µs/event"
            print(
                f"round {rnd + 1} {name:>8}: {r['cpu_us']:6.2f} µs CPU/event "
                f"({r['wall_us']:6.2f} µs wall{app}) [{r['src']}]",
                flush=True,
            )
    for name, cpus in results.items():
        print(
            f"{name:>8}: median {statistics.median(cpus):.2f} µs CPU/event "
            f"(runs {', '.join(f'{c:.2f}' for c in cpus)})"
        )
        if lost[name]:
            print(
                f"{'':>8}  app lost: median {statistics.median(lost[name]):.2f} µs/event "
                f"(runs {', '.join(f'{c:.2f}' for c in lost[name])})"
            )


if __name__ == "__main__":
    main()
