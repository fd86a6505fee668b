"""The admin view's three mounts driven with the exact bytes a test chooses.

Shared by tests/test_dashboard_inputs.py and tests/test_dashboard_csrf.py:

* ASGI: the real ``make_asgi_app`` object (with the ``LezaMiddleware`` it wraps
  itself in), called with a raw scope as a server mounting it at ``/leza``
  (``--root-path``) would — the query string as bytes, the path as text;
* WSGI: the real ``make_wsgi_app`` object called with a PEP 3333 environ
  (``SCRIPT_NAME=/leza``, latin-1 strings of the raw bytes);
* Django: the test project's URLconf through ``django.test.Client`` (the whole
  handler and middleware stack), the raw query string passed as
  ``QUERY_STRING``.

Each answers an :class:`Answer`. No client library re-encodes anything on the way.
"""

from __future__ import annotations

import asyncio
import io
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from leza_middleware import Leza
from leza_middleware.dashboard import make_asgi_app, make_wsgi_app

PREFIX = "/leza"
HOST = "dash.test"
ORIGIN = f"http://{HOST}"
#: What every response of the admin view carries (dashboard/responses.py).
SECURITY = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
    "referrer-policy": "same-origin",
}


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]  # lower-case names
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return None if not values else values[-1]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def missing_security_headers(self) -> list[str]:
        """The security headers this response lacks (or carries with another value)."""
        missing = [k for k, v in SECURITY.items() if self.header(k) != v]
        csp = self.header("content-security-policy") or ""
        if "frame-ancestors 'none'" not in csp or "default-src 'none'" not in csp:
            missing.append("content-security-policy")
        return missing


Headers = Sequence[tuple[str, str]]


class AsgiMount:
    name = "asgi"

    def __init__(self, leza: Leza, authorize: Any = lambda request: True) -> None:
        self.app = make_asgi_app(leza, authorize=authorize)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def request(
        self,
        method: str,
        path: str,
        query: bytes = b"",
        *,
        body: bytes = b"",
        headers: Headers = (),
    ) -> Answer:
        raw_headers = [(b"host", HOST.encode())]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if body:
            raw_headers += [(b"content-type", b"application/x-www-form-urlencoded"),
                            (b"content-length", str(len(body)).encode())]  # fmt: skip
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "root_path": PREFIX,
            "path": PREFIX + path,
            "raw_path": (PREFIX + path).encode("utf-8", "surrogatepass"),
            "query_string": query,
            "headers": raw_headers,
            "client": ("127.0.0.1", 40000),
            "server": (HOST, 80),
        }
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        self.loop.run_until_complete(self.app(scope, receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        found: dict[str, list[str]] = {}
        for k, v in start["headers"]:
            found.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
        content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Answer(start["status"], found, content)


class WsgiMount:
    name = "wsgi"

    def __init__(self, leza: Leza, authorize: Any = lambda request: True) -> None:
        self.app = make_wsgi_app(leza, authorize=authorize)

    def close(self) -> None:
        pass

    def request(
        self,
        method: str,
        path: str,
        query: bytes = b"",
        *,
        body: bytes = b"",
        headers: Headers = (),
    ) -> Answer:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": PREFIX,
            "PATH_INFO": path.encode("utf-8", "surrogatepass").decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": HOST,
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": HOST,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if body:
            environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
            environ["CONTENT_LENGTH"] = str(len(body))
        for k, v in headers:
            environ["HTTP_" + k.upper().replace("-", "_")] = v
        status: list[str] = []
        found: dict[str, list[str]] = {}

        def start_response(line: str, pairs: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status.append(line)
            for k, v in pairs:
                found.setdefault(k.lower(), []).append(v)
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return Answer(int(status[0].split(" ", 1)[0]), found, content)


class DjangoMount:
    """The test project's ``/leza/`` through Django's test client; ``authorize``
    is the project's header hook (``X-Dashboard: let-me-in``), sent by default."""

    name = "django"

    def __init__(self, enforce_csrf_checks: bool = False) -> None:
        from django.test import Client

        self.client = Client(enforce_csrf_checks=enforce_csrf_checks, HTTP_HOST=HOST)
        self.admit = [("X-Dashboard", "let-me-in")]

    def close(self) -> None:
        pass

    def request(
        self,
        method: str,
        path: str,
        query: bytes = b"",
        *,
        body: bytes = b"",
        headers: Headers = (),
    ) -> Answer:
        extra = {"QUERY_STRING": query.decode("latin-1")}
        for k, v in [*self.admit, *headers]:
            extra["HTTP_" + k.upper().replace("-", "_")] = v
        # The test client percent-decodes the path it is given: hand it encoded.
        encoded = quote(path.encode("utf-8", "surrogatepass"), safe="/")
        response = self.client.generic(
            method,
            PREFIX + encoded,
            data=body,
            content_type="application/x-www-form-urlencoded",
            **extra,
        )
        found: dict[str, list[str]] = {}
        for k, v in response.items():
            found.setdefault(k.lower(), []).append(v)
        for morsel in response.cookies.values():
            found.setdefault("set-cookie", []).append(morsel.OutputString())
        return Answer(response.status_code, found, response.content)


def django_setup() -> None:
    """Configure Django with the test project once per process (as test_dashboard.py)."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    if not settings.configured:
        from djangoproject import settings as project

        settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
        django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)


@contextmanager
def django_leza(storage_url: str, tmp_path: Path) -> Iterator[Leza]:
    """The Django project's Leza on ``storage_url``, its dashboard open to the header hook."""
    from django.test import override_settings

    from leza_middleware.django import get_leza

    conf = {
        "storage": storage_url,
        "geoip_db": False,
        "spill_dir": str(tmp_path / "spill-django"),
        "flush_interval": 0.05,
        "secret_key": "tests-secret-key-0123456789",
        "app_name": "djangoproject",
        "dashboard_authorize": "djangoproject.identity.dashboard_by_header",
    }
    with override_settings(LEZA=conf):
        leza = get_leza()
        try:
            yield leza
        finally:
            leza.shutdown(timeout=2)


_TOKEN = re.compile(r'name="(csrf_token|csrfmiddlewaretoken)" value="([^"]+)"')


def form_token(page: str) -> tuple[str, str] | None:
    """(field, token) of the first form in ``page``."""
    found = _TOKEN.search(page)
    return None if found is None else (found.group(1), found.group(2))


def cookie_pair(answer: Answer, name: str) -> str | None:
    """``name=value`` of a cookie ``answer`` sets, ready for a Cookie header."""
    for line in answer.headers.get("set-cookie", []):
        first = line.split(";", 1)[0].strip()
        if first.startswith(name + "="):
            return first
    return None
