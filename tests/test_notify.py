"""Notifiers and the dispatcher, against a real HTTP receiver and a real SMTP server.

The webhook tests POST to a ``ThreadingHTTPServer`` on a loopback port; the email
tests talk SMTP to an ``aiosmtpd`` server (STARTTLS with a throwaway certificate
made by the ``openssl`` command when it is installed). No mocks: the only faults
are real ones (a closed port, a server answering 500, a notifier that raises).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, Session

from leza_middleware.errors import LezaConfigError
from leza_middleware.notify import (
    Dispatcher,
    EmailNotifier,
    LoggingNotifier,
    Notification,
    NotificationError,
    Notifier,
    Notify,
    WebhookNotifier,
    sign,
)

AT = datetime(2026, 5, 9, 7, 35, 25, 123456, tzinfo=timezone.utc)
LIB_LOGGER = "leza_middleware.notify"


def make(event: str = "down", check: str | None = "billing", **kw: Any) -> Notification:
    state = {"down": "down", "still_down": "down", "recovered": "up"}.get(event)
    defaults: dict[str, Any] = {
        "error": "connection refused" if state == "down" else None,
        "latency_ms": 12.5,
    }
    defaults.update(kw)
    return Notification(event=event, check=check, state=state, at=AT, **defaults)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a real webhook receiver ---------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Step:
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Records every POST; answers per path from a script of steps, then 200."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self.scripts: dict[str, list[Step]] = {}
        self.base = ""

    def url(self, *steps: Step) -> str:
        path = f"/hook/{uuid.uuid4().hex}"
        with self.lock:
            self.scripts[path] = list(steps)
        return self.base + path

    def got(self, url: str) -> list[Received]:
        path = url[len(self.base) :]
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def take(self, path: str, headers: dict[str, str], body: bytes) -> Step:
        with self.lock:
            self.requests.append(Received(path, headers, body))
            script = self.scripts.get(path)
            return script.pop(0) if script else Step()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected in these tests


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        step = self.server.receiver.take(self.path, headers, body)
        if step.delay:
            time.sleep(step.delay)
        self.send_response(step.status)
        for key, value in step.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.receiver = Receiver()
    server.receiver.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- a real SMTP server ----------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = data.login == b"leza" and data.password == b"p@ss w0rd"
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)

    def messages(self) -> list[EmailMessage]:
        out = []
        for env in self.envelopes:
            raw = env.original_content or env.content
            assert isinstance(raw, bytes)
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out


@dataclass
class SMTPFixture:
    port: int
    mailbox: Mailbox


def _start_smtp(*, auth: bool = False, **kw: Any) -> tuple[Controller, Mailbox]:
    mailbox = Mailbox()
    if auth:
        kw["authenticator"] = mailbox.authenticate
    for _ in range(5):  # a free port may be taken between the probe and the bind
        controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), **kw)
        try:
            controller.start()
        except OSError:
            continue
        return controller, mailbox
    raise RuntimeError("could not start the SMTP test server")


@pytest.fixture(scope="module")
def smtp() -> Iterator[SMTPFixture]:
    controller, mailbox = _start_smtp()
    try:
        yield SMTPFixture(controller.port, mailbox)
    finally:
        controller.stop()


@pytest.fixture
def mailbox(smtp: SMTPFixture) -> Mailbox:
    smtp.mailbox.envelopes.clear()
    return smtp.mailbox


# -- helper notifiers ------------------------------------------------------------


class Recording(Notifier):
    def __init__(self, name: str = "recording") -> None:
        self.name = name
        self.got: list[Notification] = []
        self.closed = 0

    def send(self, notification: Notification) -> None:
        self.got.append(notification)

    def close(self) -> None:
        self.closed += 1


class Gate(Notifier):
    """Blocks in send() until released: a slow or hanging destination."""

    name = "gate"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.got: list[Notification] = []

    def send(self, notification: Notification) -> None:
        self.entered.set()
        assert self.release.wait(10), "gate never released"
        self.got.append(notification)


class Boom(Notifier):
    name = "boom"

    def send(self, notification: Notification) -> None:
        raise RuntimeError("kaboom")


# == Notification ===================================================================


def test_to_dict_has_the_contract_keys_and_utc_z_time() -> None:
    n = make(details={"rule": "new_country", "evidence": ["e1", "e2"]})
    d = n.to_dict()
    assert list(d) == [
        "event",
        "check",
        "state",
        "at",
        "error",
        "latency_ms",
        "message",
        "severity",
        "details",
    ]
    assert d["event"] == "down"
    assert d["check"] == "billing"
    assert d["state"] == "down"
    assert d["at"] == "2026-05-09T07:35:25.123456Z"
    assert d["error"] == "connection refused"
    assert d["latency_ms"] == 12.5
    assert d["message"] == "Check 'billing' is DOWN: connection refused"
    assert d["details"] == {"rule": "new_country", "evidence": ["e1", "e2"]}
    assert json.loads(json.dumps(d)) == d


def test_notification_normalises_time_to_utc_and_is_immutable() -> None:
    paris = timezone(timedelta(hours=2))
    n = Notification("recovered", "db", "up", datetime(2026, 5, 9, 9, 0, tzinfo=paris))
    assert n.at == datetime(2026, 5, 9, 7, 0, tzinfo=timezone.utc)
    assert n.at.tzinfo is timezone.utc
    assert n.to_dict()["at"] == "2026-05-09T07:00:00.000000Z"
    assert n.message == "Check 'db' has RECOVERED"
    with pytest.raises(FrozenInstanceError):
        n.event = "down"  # type: ignore[misc]
    src = {"rule": "x"}
    adv = Notification("advisory", None, None, AT, severity="high", message="m", details=src)
    src["rule"] = "changed"
    assert adv.details["rule"] == "x"
    with pytest.raises(TypeError):
        adv.details["rule"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"event": "exploded"}, "event must be one of"),
        ({"state": "sideways"}, "state must be"),
        ({"at": datetime(2026, 5, 9, 7, 0)}, "timezone-aware"),
    ],
)
def test_notification_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"event": "down", "check": "x", "state": "down", "at": AT}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Notification(**base)


def test_notifier_must_implement_send() -> None:
    class Incomplete(Notifier):
        name = "incomplete"

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


# == Webhook ========================================================================


def test_webhook_posts_the_json_body(receiver: Receiver) -> None:
    url = receiver.url()
    hook = WebhookNotifier(url)
    hook.send(make())
    [req] = receiver.got(url)
    body = req.json()
    assert body == {
        "event": "down",
        "check": "billing",
        "state": "down",
        "at": "2026-05-09T07:35:25.123456Z",
        "error": "connection refused",
        "latency_ms": 12.5,
        "message": "Check 'billing' is DOWN: connection refused",
        "severity": "info",
        "details": {},
    }
    assert req.headers["content-type"] == "application/json; charset=utf-8"
    assert req.headers["user-agent"].startswith("leza-middleware/")
    assert req.headers["x-leza-event"] == "down"
    assert len(req.headers["x-leza-delivery"]) == 32
    assert "x-leza-signature" not in req.headers
    assert req.body == hook.body(make())


def test_webhook_signature_verifies_with_the_secret_only(receiver: Receiver) -> None:
    secret = "correct horse battery staple"
    url = receiver.url()
    WebhookNotifier(url, secret=secret).send(make("recovered", details={"note": "é"}))
    [req] = receiver.got(url)
    header = req.headers["x-leza-signature"]
    assert header.startswith("sha256=")
    # What a receiver does: HMAC-SHA256 over the raw body bytes, constant-time compare.
    expected = "sha256=" + hmac.new(secret.encode(), req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(header, expected)
    wrong = "sha256=" + hmac.new(b"wrong secret", req.body, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(header, wrong)
    # A tampered body no longer matches.
    tampered = req.body.replace(b'"recovered"', b'"down"')
    assert tampered != req.body
    assert not hmac.compare_digest(header, sign(secret, tampered))
    assert req.json()["details"] == {"note": "é"}


def test_webhook_never_shows_secret_or_url_path() -> None:
    hook = WebhookNotifier("https://hooks.example.com/T000/B000/tokenXYZ?k=abc", secret="s3cr3t")
    assert hook.name == "webhook https://hooks.example.com"
    shown = repr(hook) + str(hook.name)
    assert "s3cr3t" not in shown
    assert "tokenXYZ" not in shown
    assert "abc" not in shown
    assert hook.signed


def test_webhook_retries_after_5xx_then_succeeds(receiver: Receiver) -> None:
    url = receiver.url(Step(500), Step(502))
    WebhookNotifier(url, secret="k", retries=3, backoff=0.01).send(make())
    reqs = receiver.got(url)
    assert len(reqs) == 3  # 500, 502, then 200
    assert len({r.body for r in reqs}) == 1
    assert len({r.headers["x-leza-delivery"] for r in reqs}) == 1  # receivers can de-duplicate
    assert len({r.headers["x-leza-signature"] for r in reqs}) == 1


def test_webhook_retries_429_and_honours_retry_after(receiver: Receiver) -> None:
    url = receiver.url(Step(429, headers={"Retry-After": "0.3"}))
    t0 = time.monotonic()
    WebhookNotifier(url, retries=1, backoff=0.01).send(make())
    assert time.monotonic() - t0 >= 0.3
    assert len(receiver.got(url)) == 2


def test_webhook_gives_up_after_the_retries(receiver: Receiver) -> None:
    url = receiver.url(*[Step(503)] * 5)
    hook = WebhookNotifier(url, retries=2, backoff=0.01)
    with pytest.raises(NotificationError, match=r"HTTP 503 after 3 attempts"):
        hook.send(make())
    assert len(receiver.got(url)) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_webhook_does_not_retry_other_4xx(receiver: Receiver, status: int) -> None:
    url = receiver.url(Step(status))
    with pytest.raises(NotificationError, match=rf"HTTP {status} \(not retried\)"):
        WebhookNotifier(url, retries=3, backoff=0.01).send(make())
    assert len(receiver.got(url)) == 1


def test_webhook_does_not_follow_redirects(receiver: Receiver) -> None:
    target = receiver.url()
    url = receiver.url(Step(302, headers={"Location": target}))
    with pytest.raises(NotificationError, match="HTTP 302"):
        WebhookNotifier(url, retries=2, backoff=0.01).send(make())
    assert len(receiver.got(url)) == 1
    assert receiver.got(target) == []


def test_webhook_timeout_is_retried_then_fails(receiver: Receiver) -> None:
    url = receiver.url(Step(200, delay=1.0), Step(200, delay=1.0))
    hook = WebhookNotifier(url, timeout=0.2, retries=1, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(NotificationError, match="timed out after 2 attempts"):
        hook.send(make())
    assert time.monotonic() - t0 < 1.5
    assert len(receiver.got(url)) == 2


def test_webhook_to_a_dead_port_fails_in_send() -> None:
    hook = WebhookNotifier(f"http://127.0.0.1:{free_port()}/hook", retries=1, backoff=0.01)
    with pytest.raises(NotificationError, match="connection refused after 2 attempts"):
        hook.send(make())


def test_dead_webhook_is_counted_and_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/SECRET-TOKEN"
    d = Dispatcher([WebhookNotifier(url, secret="hush", retries=1, backoff=0.01)])
    with caplog.at_level(logging.WARNING, logger=LIB_LOGGER):
        assert d.notify(make()) is True
        assert d.flush(10)
    stats = d.stats()
    assert stats["failed"] == 1
    assert stats["sent"] == 0
    assert stats["pending"] == 0
    label = f"webhook http://127.0.0.1:{url.split(':')[2].split('/')[0]}"
    assert stats["notifiers"][label]["failed"] == 1
    assert "connection refused" in stats["notifiers"][label]["last_error"]
    [record] = [r for r in caplog.records if r.name == LIB_LOGGER]
    assert record.levelno == logging.WARNING
    assert label in record.getMessage()
    assert not record.exc_info  # a known failure: one line, no traceback
    assert record.getMessage().count("127.0.0.1") == 1
    assert "SECRET-TOKEN" not in caplog.text
    assert "hush" not in caplog.text
    assert d.shutdown(5)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http://", "no host"),
        ("https:///path", "no host"),
        ("http://user:pw@example.com/", "user:password"),
        ("http://example.com:99999/", "invalid port"),
        ("http://example.com:0/", "invalid port"),
        ("http://exa mple.com/", "without spaces"),
        ("http://example.com/\r\nX: y", "control characters"),
        ("", "non-empty"),
    ],
)
def test_webhook_rejects_bad_urls(url: str, match: str) -> None:
    with pytest.raises(LezaConfigError, match=match):
        WebhookNotifier(url)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": ""},
        {"secret": 123},
        {"timeout": 0},
        {"timeout": -1},
        {"retries": -1},
        {"retries": 1.5},
        {"backoff": -0.1},
        {"headers": {"X-Bad": "a\r\nInjected: 1"}},
        {"headers": {"X-Leza-Signature": "forged"}},
        {"headers": {"Content-Type": "text/plain"}},
    ],
)
def test_webhook_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LezaConfigError):
        WebhookNotifier("https://example.com/hook", **kwargs)


def test_webhook_sends_extra_headers(receiver: Receiver) -> None:
    url = receiver.url()
    WebhookNotifier(url, headers={"Authorization": "Bearer abc"}).send(make())
    [req] = receiver.got(url)
    assert req.headers["authorization"] == "Bearer abc"


# == Email ==========================================================================


def test_email_reaches_the_smtp_server(smtp: SMTPFixture, mailbox: Mailbox) -> None:
    notifier = EmailNotifier(
        "127.0.0.1",
        smtp.port,
        sender="leza@example.com",
        recipients=["ops@example.com", "oncall@example.org"],
    )
    notifier.send(make())
    [env] = mailbox.envelopes
    assert env.mail_from == "leza@example.com"
    assert sorted(env.rcpt_tos) == ["oncall@example.org", "ops@example.com"]
    [msg] = mailbox.messages()
    assert msg["Subject"] == "[leza] DOWN: billing"
    assert msg["From"] == "leza@example.com"
    assert msg["To"] == "ops@example.com, oncall@example.org"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"]
    assert msg.get_content_type() == "text/plain"
    body = msg.get_content().replace("\r\n", "\n")
    assert body.startswith("Check 'billing' is DOWN: connection refused\n")
    for line in (
        "event:      down",
        "check:      billing",
        "state:      down",
        "at:         2026-05-09T07:35:25.123456Z",
        "error:      connection refused",
        "latency_ms: 12.5",
        "severity:   info",
    ):
        assert line in body


def test_email_for_recovery_and_advisory(smtp: SMTPFixture, mailbox: Mailbox) -> None:
    notifier = EmailNotifier(
        "127.0.0.1",
        smtp.port,
        sender="leza@example.com",
        recipients="ops@example.com",
        subject_prefix="[prod]",
    )
    notifier.send(make("recovered"))
    advisory = Notification(
        "advisory",
        None,
        None,
        AT,
        message="User alice logged in from a new country (BR)",
        severity="high",
        details={"rule": "new_country", "evidence": ["ev1", "ev2"]},
    )
    notifier.send(advisory)
    recovered, adv = mailbox.messages()
    assert recovered["Subject"] == "[prod] RECOVERED: billing"
    assert "state:      up" in recovered.get_content()
    assert "error:      -" in recovered.get_content()
    assert adv["Subject"] == "[prod] ADVISORY: (high) User alice logged in from a new country (BR)"
    body = adv.get_content()
    assert "severity:   high" in body
    assert '"rule": "new_country"' in body
    assert '"ev2"' in body


def test_email_login() -> None:
    controller, box = _start_smtp(auth=True, auth_require_tls=False)
    common: dict[str, Any] = {
        "sender": "leza@example.com",
        "recipients": ["ops@example.com"],
        "username": "leza",
    }
    try:
        ok = EmailNotifier("127.0.0.1", controller.port, password="p@ss w0rd", **common)
        assert "p@ss w0rd" not in repr(ok)
        ok.send(make())
        assert box.logins == ["leza"]
        assert len(box.envelopes) == 1
        bad = EmailNotifier("127.0.0.1", controller.port, password="wrong-password", **common)
        with pytest.raises(NotificationError, match="authentication failed") as err:
            bad.send(make())
        assert "wrong-password" not in str(err.value)
        assert len(box.envelopes) == 1
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_email_starttls_with_login(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    controller, box = _start_smtp(
        auth=True, tls_context=server_ctx, require_starttls=True, auth_require_tls=True
    )
    common: dict[str, Any] = {
        "sender": "leza@example.com",
        "recipients": ["ops@example.com"],
        "username": "leza",
        "password": "p@ss w0rd",
    }
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        EmailNotifier(
            "127.0.0.1", controller.port, starttls=True, ssl_context=trusted, **common
        ).send(make())
        assert box.logins == ["leza"]
        assert len(box.envelopes) == 1
        # Without STARTTLS the server refuses to go on: a failure, not a leak.
        with pytest.raises(NotificationError):
            EmailNotifier("127.0.0.1", controller.port, **common).send(make())
        # The system CAs do not trust the test certificate: the handshake fails.
        with pytest.raises(NotificationError, match=r"SSL|certificate"):
            EmailNotifier("127.0.0.1", controller.port, starttls=True, **common).send(make())
        assert len(box.envelopes) == 1
        assert box.logins == ["leza"]
    finally:
        controller.stop()


def test_email_to_a_dead_port_fails() -> None:
    notifier = EmailNotifier(
        "127.0.0.1", free_port(), sender="a@example.com", recipients=["b@example.com"], timeout=2
    )
    with pytest.raises(NotificationError, match="connection refused"):
        notifier.send(make())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"recipients": []}, "non-empty"),
        ({"recipients": ["nobody"]}, "plain address"),
        ({"recipients": ["ops@"]}, "plain address"),
        ({"recipients": ["@example.com"]}, "plain address"),
        ({"recipients": ["ops@example.com\r\nBcc: evil@example.com"]}, "plain address"),
        ({"recipients": ["Ops <ops@example.com>"]}, "plain address"),
        ({"sender": "leza"}, "sender"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"host": ""}, "host"),
        ({"host": "smtp example.com"}, "host"),
        ({"starttls": True, "ssl": True}, "not both"),
        ({"username": "u"}, "together"),
        ({"password": "p"}, "together"),
        ({"timeout": 0}, "timeout"),
        ({"subject_prefix": "[a]\r\nBcc: x@y.z"}, "one line"),
    ],
)
def test_email_rejects_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    settings: dict[str, Any] = {
        "host": "smtp.example.com",
        "port": 587,
        "sender": "leza@example.com",
        "recipients": ["ops@example.com"],
    }
    settings.update(kwargs)
    with pytest.raises(LezaConfigError, match=match):
        EmailNotifier(**settings)


def test_email_repr_hides_the_password() -> None:
    n = EmailNotifier(
        "smtp.example.com",
        587,
        sender="a@example.com",
        recipients=["b@example.com"],
        username="bot",
        password="hunter2",
        starttls=True,
    )
    assert "hunter2" not in repr(n)
    assert "hunter2" not in str(vars(n).get("password"))
    assert "bot" in repr(n)


# == Logging ========================================================================


def test_logging_notifier_levels_and_extra(caplog: pytest.LogCaptureFixture) -> None:
    notifier = LoggingNotifier()
    with caplog.at_level(logging.DEBUG, logger="leza.notify"):
        notifier.send(make("down"))
        notifier.send(make("recovered"))
        notifier.send(Notification("advisory", None, None, AT, message="burst", severity="high"))
    records = [r for r in caplog.records if r.name == "leza.notify"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, "Check 'billing' is DOWN: connection refused"),
        (logging.INFO, "Check 'billing' has RECOVERED"),
        (logging.WARNING, "burst"),
    ]
    assert records[0].__dict__["leza_notification"]["check"] == "billing"


def test_logging_notifier_fixed_level_and_bad_level(caplog: pytest.LogCaptureFixture) -> None:
    notifier = LoggingNotifier("myapp.alarms", level="error")
    with caplog.at_level(logging.DEBUG, logger="myapp.alarms"):
        notifier.send(make("recovered"))
    assert [r.levelno for r in caplog.records if r.name == "myapp.alarms"] == [logging.ERROR]
    with pytest.raises(LezaConfigError, match="unknown level"):
        LoggingNotifier(level="loud")


# == Dispatcher =====================================================================


def test_notify_returns_at_once_while_a_notifier_hangs() -> None:
    gate = Gate()
    d = Dispatcher([gate], queue_size=1000)
    try:
        t0 = time.monotonic()
        results = [d.notify(make()) for _ in range(200)]
        elapsed = time.monotonic() - t0
        assert all(results)
        assert gate.entered.wait(5)
        assert elapsed < 0.5  # the notifier is blocked for seconds: nobody waited on it
        assert d.stats()["pending"] == 200
        assert gate.got == []
    finally:
        gate.release.set()
    assert d.flush(10)
    assert len(gate.got) == 200
    assert d.stats()["sent"] == 200
    assert d.shutdown(5)


def test_queue_full_drops_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    d = Dispatcher([gate], queue_size=2)
    with caplog.at_level(logging.WARNING, logger=LIB_LOGGER):
        assert d.notify(make(check="a"))
        assert gate.entered.wait(5)  # "a" is in flight, the queue is empty
        assert d.notify(make(check="b"))
        assert d.notify(make(check="c"))
        assert not d.notify(make(check="d"))
        assert not d.notify(make(check="e"))
    stats = d.stats()
    assert stats["dropped"] == 2
    assert stats["dropped_by_reason"] == {"queue_full": 2}
    assert stats["pending"] == 3
    assert stats["enqueued"] == 3
    full = [r for r in caplog.records if r.name == LIB_LOGGER and "queue full" in r.getMessage()]
    assert len(full) == 1  # rate-limited
    gate.release.set()
    assert d.flush(5)
    assert [n.check for n in gate.got] == ["a", "b", "c"]
    assert d.stats()["sent"] == 3
    assert d.shutdown(5)


def test_flush_waits_for_delivery() -> None:
    gate = Gate()
    d = Dispatcher([gate])
    d.notify(make())
    d.notify(make("recovered"))
    assert gate.entered.wait(5)
    assert d.flush(0.2) is False
    assert gate.got == []
    threading.Timer(0.3, gate.release.set).start()
    t0 = time.monotonic()
    assert d.flush(5) is True
    assert time.monotonic() - t0 >= 0.2
    assert [n.event for n in gate.got] == ["down", "recovered"]
    assert d.stats()["pending"] == 0
    assert d.shutdown(5)


def test_failures_are_counted_per_notifier_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recording()
    d = Dispatcher([Boom(), rec])
    with caplog.at_level(logging.WARNING, logger=LIB_LOGGER):
        d.notify(make())
        d.notify(make("recovered"))
        assert d.flush(5)
    stats = d.stats()
    assert stats["sent"] == 2
    assert stats["failed"] == 2
    assert stats["notifiers"]["boom"] == {
        "sent": 0,
        "failed": 2,
        "last_error": "RuntimeError: kaboom",
    }
    assert stats["notifiers"]["recording"] == {"sent": 2, "failed": 0, "last_error": None}
    assert [n.event for n in rec.got] == ["down", "recovered"]  # one failure stops nobody
    logged = [r for r in caplog.records if r.name == LIB_LOGGER]
    assert len(logged) == 2
    assert all(r.levelno == logging.WARNING for r in logged)
    assert "notifier boom could not send the down notification for billing" in logged[0].message
    assert logged[0].exc_info is not None  # an unexpected error: traceback kept
    assert d.shutdown(5)


class Exits(Notifier):
    """A custom notifier whose library gives up with sys.exit()."""

    name = "exits"

    def send(self, notification: Notification) -> None:
        sys.exit("smtp library gave up")


def test_a_notifier_calling_sys_exit_is_a_failed_send_not_a_dead_worker() -> None:
    rec = Recording()
    d = Dispatcher([Exits(), rec])
    d.notify(make())
    d.notify(make("recovered"))
    assert d.flush(5)
    stats = d.stats()
    assert stats["notifiers"]["exits"]["failed"] == 2
    assert stats["notifiers"]["exits"]["last_error"] == "SystemExit: smtp library gave up"
    assert [n.event for n in rec.got] == ["down", "recovered"]
    assert d.shutdown(5)


def test_library_logger_is_under_leza_middleware() -> None:
    assert LIB_LOGGER.startswith("leza_middleware.")
    from leza_middleware.notify import dispatch, webhook

    assert dispatch.log.name == LIB_LOGGER
    assert webhook.log.name == LIB_LOGGER


def test_shutdown_drains_closes_and_refuses_later_notifications() -> None:
    rec = Recording()
    d = Dispatcher([rec])
    for _ in range(5):
        d.notify(make())
    assert d.shutdown(5) is True
    assert len(rec.got) == 5
    assert rec.closed == 1
    assert d.notify(make()) is False
    stats = d.stats()
    assert stats["dropped_by_reason"] == {"closed": 1}
    assert stats["sent"] == 5
    assert d.shutdown(1) is True  # idempotent
    assert rec.closed == 1


def test_shutdown_gives_up_on_a_stuck_notifier_in_time() -> None:
    gate = Gate()
    d = Dispatcher([gate])
    for _ in range(3):
        d.notify(make())
    assert gate.entered.wait(5)
    t0 = time.monotonic()
    assert d.shutdown(0.3) is False
    assert time.monotonic() - t0 < 2
    stats = d.stats()
    assert stats["dropped_by_reason"] == {"shutdown": 2}
    assert stats["pending"] == 1  # still in the stuck send()
    gate.release.set()
    assert d.flush(5)
    assert d.stats()["sent"] == 1


def test_no_notifier_means_nothing_queued() -> None:
    d = Dispatcher()
    assert d.notify(make()) is False
    assert d.stats() == {
        "enqueued": 0,
        "sent": 0,
        "failed": 0,
        "dropped": 0,
        "dropped_by_reason": {},
        "pending": 0,
        "notifiers": {},
    }
    assert d.flush(1)


def test_add_dedupes_objects_and_names() -> None:
    a, b = Recording("dup"), Recording("dup")
    d = Dispatcher([a])
    d.add(a)
    d.add(b)
    assert d.notifiers == (a, b)
    d.notify(make())
    assert d.flush(5)
    assert set(d.stats()["notifiers"]) == {"dup", "dup #2"}
    assert d.remove(a) is True
    assert d.remove(a) is False
    assert a not in d.notifiers
    assert b in d.notifiers
    with pytest.raises(LezaConfigError, match="subclass"):
        d.add(object())  # type: ignore[arg-type]
    with pytest.raises(LezaConfigError, match="queue_size"):
        Dispatcher(queue_size=0)
    assert d.shutdown(5)


def test_notify_never_raises_even_with_garbage() -> None:
    rec = Recording()
    d = Dispatcher([Boom(), rec])
    assert d.notify("not a notification") is True  # type: ignore[arg-type]
    assert d.flush(5)
    assert d.stats()["failed"] == 1
    assert d.shutdown(5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_gets_an_empty_queue_and_its_own_worker() -> None:
    gate = Gate()
    d = Dispatcher([gate])
    d.notify(make(check="parent-1"))
    d.notify(make(check="parent-2"))
    assert gate.entered.wait(5)  # the parent's worker is inside send(), one more queued
    r, w = os.pipe()
    with warnings.catch_warnings():
        # Python >= 3.12 warns that fork() in a multi-threaded process may deadlock.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            before = d.stats()
            gate.release.set()
            queued = d.notify(make("recovered", check="child"))
            flushed = d.flush(5)
            report = {
                "before": before,
                "queued": queued,
                "flushed": flushed,
                "after": d.stats(),
                "got": [n.check for n in gate.got],
                "threads": [t.name for t in threading.enumerate()],
            }
            os.write(w, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as pipe:
        chunks.append(pipe.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(b"".join(chunks))
    assert report["before"]["pending"] == 0
    assert report["before"]["enqueued"] == 0
    assert report["queued"] is True
    assert report["flushed"] is True
    assert report["after"]["sent"] == 1
    assert report["got"] == ["child"]  # the parent's queue was not sent twice
    assert "leza-notify" in report["threads"]
    # The parent is untouched and still delivers its own.
    assert d.stats()["pending"] == 2
    gate.release.set()
    assert d.flush(5)
    assert [n.check for n in gate.got] == ["parent-1", "parent-2"]
    assert d.shutdown(5)


# == Notify facade ==================================================================


def test_notify_facade_end_to_end(
    receiver: Receiver, smtp: SMTPFixture, mailbox: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    notify = Notify()
    url = receiver.url()
    hook = notify.webhook(url, secret="s", retries=0)
    mail = notify.email(
        "127.0.0.1", smtp.port, sender="leza@example.com", recipients=["ops@example.com"]
    )
    logger = notify.log()
    custom = notify.add(Recording("mine"))
    assert isinstance(hook, WebhookNotifier)
    assert isinstance(mail, EmailNotifier)
    assert isinstance(logger, LoggingNotifier)
    assert notify.notifiers == (hook, mail, logger, custom)
    with caplog.at_level(logging.INFO, logger="leza.notify"):
        assert notify.notify(make())
        assert notify.notify(make("recovered"))
        assert notify.flush(10)
    assert [r.json()["event"] for r in receiver.got(url)] == ["down", "recovered"]
    assert [m["Subject"] for m in mailbox.messages()] == [
        "[leza] DOWN: billing",
        "[leza] RECOVERED: billing",
    ]
    assert len([r for r in caplog.records if r.name == "leza.notify"]) == 2
    assert [n.event for n in custom.got] == ["down", "recovered"]
    stats = notify.stats()
    assert stats["sent"] == 8
    assert stats["failed"] == 0
    assert notify.remove(custom) is True
    assert notify.shutdown(5)
    assert custom.closed == 0  # removed before shutdown


def test_notify_facade_validates_at_configuration() -> None:
    notify = Notify()
    with pytest.raises(LezaConfigError):
        notify.webhook("gopher://example.com/")
    with pytest.raises(LezaConfigError):
        notify.email("smtp.example.com", sender="leza@example.com", recipients=[])
    assert notify.notifiers == ()
