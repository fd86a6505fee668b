"""Prometheus metrics (``leza_middleware.metrics``): fed from the recorder thread.

* in process, with a real registry and a real Starlette app: request counts and
  latency histograms per method + route + outcome equal the recorded events
  (the histogram exactly what ``observe()`` per event gives), outcomes are
  mutually exclusive, 404 scans and odd methods do not grow the label sets,
  check gauges follow a real check, the recorder's counters follow ``stats()``;
* configuration errors, and the ImportError naming the extra;
* a real uvicorn app mounting ``/metrics``, scraped over HTTP;
* gunicorn with 4 workers and ``PROMETHEUS_MULTIPROC_DIR``: N requests, any
  worker's ``/metrics`` says N;
* the Django view.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FlakyStorage, wait_for
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from leza_middleware import LezaMiddleware
from leza_middleware.errors import LezaConfigError
from leza_middleware.events import AccessEvent, Event
from leza_middleware.metrics import (
    DEFAULT_BUCKETS,
    OTHER_METHOD,
    OTHER_ROUTE,
    UNMATCHED,
    make_asgi_app,
    outcome_of,
    register,
)
from leza_middleware.state.labels import ROUTE_LABEL_MAX, route_label

HERE = Path(__file__).resolve().parent
REQUESTS = "leza_http_requests_total"
HIST = "leza_http_request_duration_seconds"


def _app(leza: Any) -> Any:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("item")

    async def boom(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=500)

    async def mine(request: Request) -> PlainTextResponse:
        return PlainTextResponse("not yours", status_code=403)

    async def slow(request: Request) -> PlainTextResponse:
        await asyncio.sleep(0.06)
        return PlainTextResponse("slow")

    inner = Starlette(
        routes=[
            Route("/", home),
            Route("/items/{item_id:int}", item),
            Route("/boom", boom, methods=["POST"]),
            Route("/mine", mine),
            Route("/slow", slow),
            Route("/admin/panel", home),
        ]
    )
    return LezaMiddleware(inner, leza=leza)


async def _traffic(app: Any, calls: list[tuple[str, str]]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for method, path in calls:
            await client.request(method, path)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _samples(registry: CollectorRegistry, metric: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        if family.name == metric
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_requests_and_latencies_per_method_route_and_outcome(make_leza: Any) -> None:
    registry = CollectorRegistry()
    leza = make_leza(storage="memory://", permissions={"Admin Permission": ["/admin/*"]})
    metrics = leza.metrics(registry)
    assert leza.metrics(registry) is metrics  # once per Leza and registry
    seen: list[Event] = []
    leza.recorder.add_observer(seen.extend)
    calls = (
        [("GET", "/")] * 5
        + [("GET", f"/items/{i}") for i in range(7)]
        + [("POST", "/boom")] * 3
        + [("GET", "/mine")] * 2  # the app's own 403
        + [("GET", "/admin/panel")] * 4  # refused by leza's permissions: 401
        + [("GET", "/slow")] * 2
        + [("GET", f"/scan/{uuid.uuid4().hex}.php") for _ in range(60)]  # a 404 scan
        + [("PROPFIND", "/"), ("BREW", "/"), ("X-ODD", "/items/1")]
    )
    asyncio.run(_traffic(_app(leza), calls))
    assert leza.flush(5)
    app = leza.settings.app_name

    def count(method: str, route: str, outcome: str) -> float:
        return _value(registry, REQUESTS, app=app, method=method, route=route, outcome=outcome)

    assert wait_for(lambda: count("GET", UNMATCHED, "client_error") == 60)
    assert count("GET", "/", "success") == 5
    assert count("GET", "/items/{item_id}", "success") == 7
    assert count("POST", "/boom", "server_error") == 3
    assert count("GET", "/mine", "denied") == 2
    # Refused before the app ran: no route template, so counted as unmatched.
    assert count("GET", UNMATCHED, "denied") == 4
    assert count("GET", "/slow", "success") == 2
    odd = sum(
        v for (name, labels), v in _samples(registry, "leza_http_requests").items()
        if dict(labels)["method"] == OTHER_METHOD
    )  # fmt: skip
    assert odd == 3

    # Every request counted once, in exactly one outcome.
    requests = _samples(registry, "leza_http_requests")
    assert sum(requests.values()) == len(calls)
    access = [e for e in seen if isinstance(e, AccessEvent)]
    assert len(access) == len(calls)
    by_outcome = Tally(outcome_of(e.outcome, e.status) for e in access)
    for outcome, n in by_outcome.items():
        assert sum(v for (_, lab), v in requests.items() if dict(lab)["outcome"] == outcome) == n
    # Bounded labels: one route for 60 scanned paths, the 3 odd methods in one label.
    routes = {dict(lab)["route"] for _, lab in requests}
    assert routes == {"/", "/items/{item_id}", "/boom", "/mine", "/slow", UNMATCHED}
    assert {dict(lab)["method"] for _, lab in requests} == {"GET", "POST", OTHER_METHOD}

    # The histogram is exactly what observe() per recorded event gives.
    reference = CollectorRegistry()
    ref = Histogram(HIST, "reference", ("app", "method", "route", "outcome"), registry=reference)
    for e in access:
        route = e.route if e.route is not None else UNMATCHED
        method = e.method if e.method in ("GET", "POST") else OTHER_METHOD
        ref.labels(app, method, route, outcome_of(e.outcome, e.status)).observe(
            e.duration_us / 1_000_000
        )
    got, want = _samples(registry, HIST), _samples(reference, HIST)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    slow = _value(registry, f"{HIST}_bucket", app=app, method="GET", route="/slow",
                  outcome="success", le="0.05")  # fmt: skip
    assert slow == 0  # 60 ms each: above the 0.05 s bucket
    assert _value(registry, f"{HIST}_count", app=app, method="GET", route="/slow",
                  outcome="success") == 2  # fmt: skip
    assert metrics.routes_overflowed == 0


def test_route_templates_past_max_routes_are_one_label(make_leza: Any) -> None:
    registry = CollectorRegistry()
    leza = make_leza(storage="memory://")
    leza.metrics(registry, max_routes=2)
    calls = [("GET", p) for p in ("/", "/items/1", "/slow", "/mine", "/nowhere")]
    asyncio.run(_traffic(_app(leza), calls))
    assert leza.flush(5)
    assert wait_for(lambda: sum(_samples(registry, "leza_http_requests").values()) == 5)
    requests = _samples(registry, "leza_http_requests")
    routes = Tally()
    for (_, labels), value in requests.items():
        routes[dict(labels)["route"]] += int(value)
    assert routes == {"/": 1, "/items/{item_id}": 1, OTHER_ROUTE: 2, UNMATCHED: 1}


def test_a_mount_with_path_parameters_cannot_grow_the_route_labels(make_leza: Any) -> None:
    """Inside a Mount whose prefix has a parameter, the stored route carries the
    client's value (``/tenants/acme/...``): the label set is still capped."""
    registry = CollectorRegistry()
    leza = make_leza(storage="memory://")
    metrics = leza.metrics(registry, max_routes=10)

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("page")

    inner = Starlette(routes=[Mount("/tenants/{tenant}", routes=[Route("/page", page)])])
    app = LezaMiddleware(inner, leza=leza)
    asyncio.run(_traffic(app, [("GET", f"/tenants/t{i}/page") for i in range(200)]))
    assert leza.flush(5)
    assert wait_for(lambda: sum(_samples(registry, "leza_http_requests").values()) == 200)
    routes = {dict(lab)["route"] for _, lab in _samples(registry, "leza_http_requests")}
    assert len(routes) <= 11
    assert OTHER_ROUTE in routes
    assert metrics.routes_overflowed == 190


def test_check_gauges_follow_a_real_check(make_leza: Any) -> None:
    registry = CollectorRegistry()
    leza = make_leza(advisories=False)
    leza.metrics(registry)
    healthy = threading.Event()
    healthy.set()
    leza.availability.check("queue", healthy.is_set, interval=0.05, timeout=0.05, retries=2)
    app = leza.settings.app_name

    def up() -> float | None:
        return registry.get_sample_value("leza_check_up", {"app": app, "check": "queue"})

    assert wait_for(lambda: up() == 1.0)
    labels = {"app": app, "check": "queue"}
    latency = registry.get_sample_value("leza_check_latency_seconds", labels)
    assert latency is not None
    assert 0 <= latency < 0.05
    probed = registry.get_sample_value("leza_check_last_probe_timestamp_seconds", labels)
    assert probed is not None
    assert abs(probed - time.time()) < 5
    healthy.clear()
    assert wait_for(lambda: up() == 0.0)
    healthy.set()
    assert wait_for(lambda: up() == 1.0)
    leza.availability.stop()


def test_an_unknown_check_has_no_up_sample(make_leza: Any) -> None:
    """``leza_check_up`` is absent until the state is known (not 0, which reads as DOWN)."""
    registry = CollectorRegistry()
    leza = make_leza(advisories=False)
    leza.metrics(registry)
    # Failing, but retries=50: it stays unknown for the whole test.
    leza.availability.check("cold", lambda: False, interval=0.05, timeout=0.05, retries=50)
    app = leza.settings.app_name
    labels = {"app": app, "check": "cold"}
    assert wait_for(
        lambda: (
            registry.get_sample_value("leza_check_last_probe_timestamp_seconds", labels) is not None
        )
    )
    assert registry.get_sample_value("leza_check_up", labels) is None
    leza.availability.stop()


def test_recorder_counters_follow_stats(flaky_storage: FlakyStorage, make_leza: Any) -> None:
    registry = CollectorRegistry()
    leza = make_leza(storage=flaky_storage, max_retries=0, queue_size=50, batch_size=10_000)
    leza.metrics(registry)
    app = leza.settings.app_name

    def counter(name: str) -> float:
        return _value(registry, f"leza_recorder_{name}_total", app=app)

    asyncio.run(_traffic(_app(leza), [("GET", "/")] * 10))
    assert leza.flush(5)
    assert wait_for(lambda: counter("events_written") == 10)
    # A full queue (50): the recorder thread is held in a slow write meanwhile.
    flaky_storage.delay = 30
    calls = flaky_storage.write_calls
    leza.recorder.offer(_raw(0))
    assert wait_for(lambda: flaky_storage.write_calls > calls)
    for i in range(80):
        leza.recorder.offer(_raw(i + 1))
    assert leza.stats()["dropped_by_reason"]["queue_full"] == 30
    flaky_storage.delay = 0
    flaky_storage.release.set()
    assert leza.flush(10)
    # Storage down: spilled; back: replayed.
    flaky_storage.down = True
    asyncio.run(_traffic(_app(leza), [("GET", "/")] * 5))
    assert leza.flush(5)
    assert wait_for(lambda: counter("events_spilled") == 5)
    assert counter("storage_errors") >= 1
    flaky_storage.down = False
    assert wait_for(lambda: counter("events_replayed") == 5, timeout=10)

    def synced() -> bool:
        s = leza.stats()
        return (
            counter("events_enqueued") == s["enqueued"]
            and counter("events_written") == s["written"]
            and counter("events_spilled") == s["spilled"]
            and counter("events_replayed") == s["replayed"]
            and _value(registry, "leza_recorder_events_dropped_total", app=app,
                       reason="queue_full") == s["dropped_by_reason"]["queue_full"]
            and _value(registry, "leza_recorder_events_pending", app=app) == s["pending"]
        )  # fmt: skip

    assert wait_for(synced)


def _raw(i: int) -> tuple[Any, ...]:
    from leza_middleware.request_path import raw_access

    return raw_access(
        ts=time.time(), duration=0.001, request_id=f"m-{i}", path="/", peer="127.0.0.1",
        user_agent=b"curl/8",
    )  # fmt: skip


def test_bad_configuration_is_a_clear_error(make_leza: Any) -> None:
    registry = CollectorRegistry()
    leza = make_leza(storage="memory://")
    for buckets in ([], [0.5, 0.1], [0, 1], ["x"], [float("nan")]):
        with pytest.raises(LezaConfigError, match="buckets"):
            register(leza, registry, buckets=buckets)
    for bad in (0, -1, True, "10"):
        with pytest.raises(LezaConfigError, match="max_routes"):
            register(leza, registry, max_routes=bad)
    with pytest.raises(LezaConfigError, match="CollectorRegistry"):
        register(leza, registry=object())  # type: ignore[arg-type]
    register(leza, registry, buckets=(0.1, 1.0))
    with pytest.raises(LezaConfigError, match="already registered"):
        register(leza, registry, buckets=(0.1, 2.0))
    other = make_leza(storage="memory://", app_name="other")
    with pytest.raises(LezaConfigError, match="buckets"):
        register(other, registry)  # one histogram per registry: DEFAULT_BUCKETS differ
    assert register(other, registry, buckets=[0.1, 1.0, float("inf")]) is not None
    with pytest.raises(LezaConfigError, match="need a leza"):
        make_asgi_app(registry=registry, max_routes=3)


def test_missing_prometheus_client_names_the_extra() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None  # as if it were not installed
        from leza_middleware import Leza
        leza = Leza(storage="memory://", geoip_db=False)
        try:
            leza.metrics()
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("no ImportError")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'leza-middleware[prometheus]'" in out.stdout


def test_django_view_serves_the_registry(make_leza: Any) -> None:
    import django
    from django.conf import settings
    from django.test import RequestFactory

    if not settings.configured:  # the same way tests/test_django.py configures it
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    from leza_middleware.metrics import make_django_view

    registry = CollectorRegistry()
    leza = make_leza(storage="memory://")
    view = make_django_view(leza, registry)
    asyncio.run(_traffic(_app(leza), [("GET", "/")] * 3))
    assert leza.flush(5)
    labels = {"app": leza.settings.app_name, "method": "GET", "route": "/", "outcome": "success"}
    assert wait_for(lambda: registry.get_sample_value(REQUESTS, labels) == 3)
    response = view(RequestFactory().get("/metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'leza_http_requests_total{app="app",method="GET",outcome="success",route="/"} 3.0' in (
        text
    )
    assert view(RequestFactory().post("/metrics")).status_code == 405


# ----------------------------------------------------------------------------- real servers


def _scrape(url: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _total(samples: dict[tuple[str, tuple[Any, ...]], float], route: str) -> float:
    return sum(
        v for (name, labels), v in samples.items()
        if name == REQUESTS and dict(labels).get("route") == route
    )  # fmt: skip


UVICORN_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from leza_middleware import Leza, LezaMiddleware
    from leza_middleware.metrics import make_asgi_app

    leza = Leza()  # LEZA_* variables
    leza.availability.check("self", lambda: None, interval=0.2, timeout=0.2)

    async def hello(request):
        return PlainTextResponse("hi")

    async def broken(request):
        return PlainTextResponse("no", status_code=500)

    app = Starlette(routes=[
        Route("/hello/{name}", hello),
        Route("/broken", broken),
        Route("/metrics", make_asgi_app(leza)),
        Mount("/mounted-metrics", make_asgi_app()),  # the same, served once more
    ])
    app.add_middleware(LezaMiddleware, leza=leza)
    """
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        LEZA_STORAGE=f"sqlite:///{tmp_path / 'leza.db'}",
        LEZA_GEOIP_DB="off",
        LEZA_FLUSH_INTERVAL="0.1",
        LEZA_SECRET_KEY="metrics-secret-key-0123456789",
        LEZA_SPILL_DIR=str(tmp_path / "spill"),
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(HERE), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def uvicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn process serving a Starlette app with ``/metrics`` mounted."""
    tmp_path = tmp_path_factory.mktemp("uvicorn-metrics")
    (tmp_path / "metrics_uvicorn_app.py").write_text(UVICORN_APP)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "metrics_uvicorn_app:app", "--port", str(port),
         "--log-level", "warning"],
        env=_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/metrics", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_uvicorn_app_serves_its_metrics_over_http(uvicorn_server: str) -> None:
    base = uvicorn_server
    n = 40
    with httpx.Client(base_url=base) as client:
        for i in range(n):
            assert client.get(f"/hello/u{i}").status_code == 200
        for _ in range(3):
            assert client.get("/broken").status_code == 500
        for i in range(25):
            assert client.get(f"/wp-admin/{i}.php").status_code == 404

    def scraped() -> dict[tuple[str, tuple[Any, ...]], float]:
        return _scrape(f"{base}/metrics")

    # The 68 requests can reach the metrics in more than one recorder batch: wait
    # for the last of them (the 404s) too, not only for the first route.
    def arrived() -> bool:
        s = scraped()
        totals = (_total(s, "/hello/{name}"), _total(s, "/broken"), _total(s, UNMATCHED))
        return totals == (n, 3, 25)

    assert wait_for(arrived, timeout=10)
    samples = scraped()
    assert _total(samples, "/broken") == 3
    assert _total(samples, UNMATCHED) == 25
    outcomes = {
        dict(labels)["outcome"]: v for (name, labels), v in samples.items()
        if name == REQUESTS and dict(labels)["route"] == "/broken"
    }  # fmt: skip
    assert outcomes == {"server_error": 3}
    hist_count = sum(
        v for (name, labels), v in samples.items()
        if name == f"{HIST}_count" and dict(labels)["route"] == "/hello/{name}"
    )  # fmt: skip
    assert hist_count == n
    assert wait_for(lambda: any(name == "leza_check_up" for name, _ in scraped()))
    samples = scraped()
    assert samples[("leza_check_up", (("app", "app"), ("check", "self")))] == 1.0
    assert samples[("leza_recorder_events_written_total", (("app", "app"),))] >= n
    # Mounted instead: /mounted-metrics redirects to /mounted-metrics/, which Prometheus follows.
    redirected = httpx.get(f"{base}/mounted-metrics", follow_redirects=True, timeout=10)
    assert redirected.status_code == 200
    assert "leza_http_requests_total" in redirected.text


@pytest.mark.slow
def test_gunicorn_workers_sum_into_one_scrape(tmp_path: Path) -> None:
    """4 sync workers, each with its own recorder thread writing its own values;
    ``PROMETHEUS_MULTIPROC_DIR`` set: whichever worker answers ``/metrics`` shows
    the sum over all of them, exactly N."""
    from test_multiworker import WORKERS, Load, send, wait_ready

    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    listener = __import__("socket").create_server(("127.0.0.1", 0), backlog=256)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    cmd = [
        sys.executable, "-m", "gunicorn", "metrics_apps:flask_app", "--bind", f"fd://{fd}",
        "--workers", str(WORKERS), "--worker-class", "sync", "--log-level", "warning",
        "-c", str(HERE / "metrics_apps.py"),
    ]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=_env(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(multiproc)), cwd=tmp_path,
            stdout=out, stderr=subprocess.STDOUT, pass_fds=(fd,),
        )  # fmt: skip

    class _Server:  # what wait_ready needs of test_multiworker's Gunicorn
        def __init__(self) -> None:
            self.proc, self.port = proc, port

        def output(self) -> str:
            return log.read_text(errors="replace")

    try:
        load = Load()
        wait_ready(_Server(), load)  # type: ignore[arg-type]
        probes = len(load.answered)
        n = 400
        send(port, load, count=n)
        assert not load.errors, load.errors[:5]
        assert len(load.by_pid()) == WORKERS
        assert all(count > 0 for count in load.by_pid().values())
        expected = probes + n

        def scraped() -> float:
            return _total(_scrape(f"http://127.0.0.1:{port}/metrics"), "/")

        assert wait_for(lambda: scraped() == expected, timeout=20), (scraped(), expected)
        time.sleep(0.5)  # a few more flush intervals: nothing counted twice
        scrapes = [scraped() for _ in range(8)]  # fresh connections: various workers
        assert scrapes == [expected] * 8
        samples = _scrape(f"http://127.0.0.1:{port}/metrics")
        counts = [v for (name, lab), v in samples.items() if name == f"{HIST}_count"]
        infs = [v for (name, lab), v in samples.items()
                if name == f"{HIST}_bucket" and dict(lab)["le"] == "+Inf"]  # fmt: skip
        assert sum(counts) == sum(infs) == expected  # the histogram, summed over workers too
        written = samples[("leza_recorder_events_written_total", (("app", "app"),))]
        assert written >= expected
        # Each worker wrote its own values file.
        assert len(list(multiproc.glob("counter_*.db"))) >= WORKERS
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        listener.close()
    assert "Traceback" not in log.read_text(errors="replace")


def test_default_buckets_are_prometheus_defaults() -> None:
    assert Histogram.DEFAULT_BUCKETS[:-1] == DEFAULT_BUCKETS


def test_hostile_route_and_method_values_stay_valid_and_short(make_leza: Any) -> None:
    """Whatever reaches the route column (a lone surrogate, 5,000 characters,
    quotes, newlines), the labels stay short and the exposition stays valid."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    leza = make_leza(storage="memory://")
    feed = leza.metrics(registry)
    routes = ["/a\ud800b", "/" + "x" * 5000, '/q"uo\\te\n{id}', "/ünïcødé/{id}"]
    events = [
        AccessEvent.build(
            id=f"e{i}",
            ts=1,
            action="access",
            method=method,
            endpoint="/",
            route=route,
            status=200,
            duration_us=1000,
            outcome="success",
            reason="",
            request_id=f"r{i}",
            client_ip="127.0.0.1",
            ip_valid=True,
            peer_ip="127.0.0.1",
        )
        for i, (method, route) in enumerate(
            [(m, r) for r in routes for m in ("GET", "get", "G\x00T", "X" * 300)]
        )
    ]
    feed(events)
    feed(())
    text = generate_latest(registry).decode("utf-8")
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == REQUESTS
    }
    assert sum(parsed.values()) == len(events)
    labels = [dict(lab) for _, lab in parsed]
    assert {lab["method"] for lab in labels} == {"GET", OTHER_METHOD}
    assert all(len(lab["route"]) <= ROUTE_LABEL_MAX for lab in labels)
    assert {lab["route"] for lab in labels} == {
        "/a?b",
        route_label("/" + "x" * 5000),  # cut as STATE's rollups cut it
        '/q"uo\\te\n{id}',
        "/ünïcødé/{id}",
    }
