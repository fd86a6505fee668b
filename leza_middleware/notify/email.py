"""Email notifier: one plain-text message per notification, over SMTP (stdlib)."""

from __future__ import annotations

import json
import smtplib
import ssl as _ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from ..errors import LezaConfigError
from .base import Notification, NotificationError, Notifier, iso_z

__all__ = ["EmailNotifier"]

_SUBJECT_MAX = 200
_TITLES = {
    "down": "DOWN",
    "recovered": "RECOVERED",
    "still_down": "STILL DOWN",
    "advisory": "ADVISORY",
}


class EmailNotifier(Notifier):
    """Send each notification as a plain-text email through an SMTP server.

    :param host: SMTP server host name.
    :param port: 25 (relay), 587 (submission, with ``starttls=True``) or 465 (``ssl=True``).
    :param sender: the From address.
    :param recipients: one address or a list of addresses (To).
    :param username: SMTP AUTH user name (with ``password``).
    :param password: SMTP AUTH password; never shown in ``repr()`` or logs.
    :param starttls: upgrade the connection with STARTTLS before AUTH.
    :param ssl: connect with implicit TLS (SMTPS). Exclusive with ``starttls``.
    :param timeout: seconds for the connection and each SMTP command.
    :param subject_prefix: put in front of every subject.
    :param ssl_context: the TLS context (default: system CAs, host name checked).
    :param name: label in ``stats()`` and logs; defaults to ``email <host:port>``.
    """

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str,
        recipients: Sequence[str] | str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        ssl: bool = False,
        timeout: float = 10.0,
        subject_prefix: str = "[leza]",
        ssl_context: _ssl.SSLContext | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(host, str) or not host.strip() or _has_bad_chars(host, space=True):
            raise LezaConfigError(f"email host must be a host name, got {host!r}")
        self.host = host.strip()
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise LezaConfigError(f"email port must be an int in 1..65535, got {port!r}")
        self.port = port
        self.sender = _check_address("sender", sender)
        if isinstance(recipients, str):
            recipients = [recipients]
        if not isinstance(recipients, Sequence) or not recipients:
            raise LezaConfigError("email recipients must be a non-empty list of addresses")
        self.recipients = tuple(_check_address("recipient", r) for r in recipients)
        if (username is None) != (password is None):
            raise LezaConfigError("email username and password go together: set both or neither")
        if username is not None and (not isinstance(username, str) or not username):
            raise LezaConfigError("email username must be a non-empty string")
        if password is not None and not isinstance(password, str):
            raise LezaConfigError("email password must be a string")
        self.username = username
        self._password = password
        if starttls and ssl:
            raise LezaConfigError(
                "email: choose starttls=True (port 587) or ssl=True (port 465), not both"
            )
        self.starttls = bool(starttls)
        self.ssl = bool(ssl)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise LezaConfigError(f"email timeout must be a number > 0, got {timeout!r}")
        self.timeout = float(timeout)
        if not isinstance(subject_prefix, str) or _has_bad_chars(subject_prefix):
            raise LezaConfigError("email subject_prefix must be one line of text")
        self.subject_prefix = subject_prefix
        self.ssl_context = ssl_context
        self.name = name or f"email {self.host}:{self.port}"

    def __repr__(self) -> str:
        auth = f" user={self.username!r}" if self.username else ""
        return f"<EmailNotifier {self.name!r} to={list(self.recipients)!r}{auth}>"

    def subject(self, notification: Notification) -> str:
        title = _TITLES.get(notification.event, notification.event.upper())
        if notification.event == "advisory":
            what = f"({notification.severity}) {notification.message}"
        else:
            what = notification.check or notification.message
        text = " ".join(f"{self.subject_prefix} {title}: {what}".split())  # one line
        if len(text) > _SUBJECT_MAX:
            text = text[: _SUBJECT_MAX - 1] + "…"
        return text.strip()

    def body(self, notification: Notification) -> str:
        n = notification
        lines = [
            n.message,
            "",
            f"event:      {n.event}",
            f"check:      {_show(n.check)}",
            f"state:      {_show(n.state)}",
            f"at:         {iso_z(n.at)}",
            f"error:      {_show(n.error)}",
            f"latency_ms: {_show(n.latency_ms)}",
            f"severity:   {n.severity}",
        ]
        if n.details:
            details = json.dumps(dict(n.details), indent=2, sort_keys=True, default=str)
            lines += ["", "details:", details]
        lines += ["", "-- ", "Sent by leza-middleware."]
        return "\n".join(lines) + "\n"

    def message(self, notification: Notification) -> EmailMessage:
        """The email sent for ``notification``."""
        msg = EmailMessage()
        msg["Subject"] = self.subject(notification)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
        msg.set_content(self.body(notification))
        return msg

    def send(self, notification: Notification) -> None:
        msg = self.message(notification)
        context = self.ssl_context
        if (self.ssl or self.starttls) and context is None:
            context = _ssl.create_default_context()
        try:
            smtp: smtplib.SMTP
            if self.ssl:
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                if self.starttls:
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if self.username is not None and self._password is not None:
                    smtp.login(self.username, self._password)
                refused = smtp.send_message(
                    msg, from_addr=self.sender, to_addrs=list(self.recipients)
                )
        except (smtplib.SMTPException, OSError) as exc:
            raise NotificationError(f"{self.name}: {_describe(exc)}") from None
        if refused:
            raise NotificationError(
                f"{self.name}: recipients refused: {', '.join(sorted(refused))} "
                f"(sent to the others)"
            )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"authentication failed ({exc.smtp_code})"  # never echo credentials
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"all recipients refused: {', '.join(sorted(exc.recipients))}"
    if isinstance(exc, smtplib.SMTPResponseException):
        raw = exc.smtp_error
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return f"{type(exc).__name__} {exc.smtp_code}: {text}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}"


def _show(value: object) -> str:
    return "-" if value is None else str(value)


def _has_bad_chars(text: str, *, space: bool = False) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 or (space and c.isspace()) for c in text)


def _check_address(what: str, address: object) -> str:
    if not isinstance(address, str):
        raise LezaConfigError(f"email {what} must be a string address, got {address!r}")
    addr = address.strip()
    local, at, domain = addr.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or ("." not in domain.strip("[]") and domain != "localhost")
        or _has_bad_chars(addr, space=True)
        or any(c in addr for c in '<>,;"')
    ):
        raise LezaConfigError(
            f"email {what} must be a plain address like ops@example.com, got {address!r}"
        )
    return addr
