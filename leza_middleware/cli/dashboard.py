"""``leza dashboard [--host 127.0.0.1] [--port 8765] [--open]``: the admin view, standalone.

Serves :func:`~leza_middleware.dashboard.make_asgi_app` under uvicorn against
``--storage``. Who gets in:

* by default only loopback clients, and only with a loopback ``Host`` header
  (a web page cannot reach the dashboard through DNS rebinding);
* a host other than loopback is refused unless ``--allow-remote`` and a token
  (``--token`` or ``$LEZA_DASHBOARD_TOKEN``) are both given; then any client
  that shows the token gets in;
* with a token, every request must show it: ``Authorization: Bearer TOKEN``,
  or once ``?token=TOKEN``, which answers with a redirect that drops it from
  the URL and sets an HttpOnly cookie (an HMAC of the token, not the token).

Revoking a session from the page writes an audit row, chained with the secret
key; without ``$LEZA_SECRET_KEY`` that row could never verify, so revokes are
refused (the page stays readable).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import ipaddress
import os
import signal
import socket
import threading
import time
import webbrowser
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from .common import CliError, Context

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["TOKEN_COOKIE", "Gate", "add_arguments", "is_loopback_host", "run"]

HELP = "serve the admin view on localhost against the storage (Ctrl-C to stop)"

TOKEN_COOKIE = "leza_dashboard"
#: Shorter tokens can be guessed; ``secrets.token_urlsafe()`` gives 43 characters.
MIN_TOKEN = 16
_TOKEN_ENV = "LEZA_DASHBOARD_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8765, help="port (8765; 0: any free one)")
    parser.add_argument("--open", action="store_true", help="open the page in a web browser")
    parser.add_argument(
        "--allow-remote", action="store_true",
        help="let clients other than this machine in (needs --token)",
    )  # fmt: skip
    parser.add_argument(
        "--token", metavar="TOKEN",
        help=f"require this token (default: ${_TOKEN_ENV}); at least {MIN_TOKEN} characters",
    )  # fmt: skip


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: 0..65535")
    return n


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (a name that resolves elsewhere is not)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _host_of(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8765`` → ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"leza-dashboard-cookie", hashlib.sha256).hexdigest()


class Gate:
    """Who may see the standalone dashboard: ``authorize`` for ``make_asgi_app`` and
    an ASGI wrapper for what ``authorize`` cannot do (set the token cookie,
    refuse revokes without a secret key)."""

    def __init__(self, *, allow_remote: bool, token: str | None, can_revoke: bool) -> None:
        self.allow_remote = allow_remote
        self.cookie = None if token is None else _cookie_value(token)
        self.token = token
        self.can_revoke = can_revoke

    def authorize(self, request: Request) -> bool:
        if not self.allow_remote:
            client = request.client
            if client is None or not is_loopback_host(client.host):
                return False
            if not is_loopback_host(_host_of(request.headers.get("host", ""))):
                return False  # DNS rebinding: a page of another site, resolved to 127.0.0.1
        if self.cookie is None:
            return True
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and self._token_ok(auth[7:].strip()):
            return True
        return hmac.compare_digest(request.cookies.get(TOKEN_COOKIE, ""), self.cookie)

    def _token_ok(self, given: str) -> bool:
        assert self.cookie is not None
        return hmac.compare_digest(_cookie_value(given), self.cookie)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def gate(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                response = self._intercept(scope)
                if response is not None:
                    status, headers, body = response
                    raw = [(k.encode(), v.encode()) for k, v in headers]
                    await send({"type": "http.response.start", "status": status, "headers": raw})
                    await send({"type": "http.response.body", "body": body})
                    return
            await app(scope, receive, send)

        return gate

    def _intercept(self, scope: Scope) -> tuple[int, list[tuple[str, str]], bytes] | None:
        if self.token is not None:
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
            given = [v for k, v in query if k == "token"]
            if given and self._token_ok(given[0]):
                # The token leaves the URL (history, logs, Referer) for a cookie.
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                # One leading slash: "//host/…" would send the browser to another site.
                path = "/" + (scope.get("root_path", "") + scope["path"]).lstrip("/")
                target = path + (f"?{rest}" if rest else "")
                cookie = f"{TOKEN_COOKIE}={self.cookie}; Path=/; HttpOnly; SameSite=Strict"
                if scope.get("scheme") == "https":
                    cookie += "; Secure"
                headers = [("location", target), ("set-cookie", cookie),
                           ("cache-control", "no-store"), ("content-length", "0")]  # fmt: skip
                return 303, headers, b""
        if not self.can_revoke and scope["method"] == "POST":
            body = (
                b"Revoking is off: this dashboard was started without LEZA_SECRET_KEY, and the "
                b"audit row of a revoke must be chained with the app's key. Restart it with "
                b"LEZA_SECRET_KEY set.\n"
            )
            headers = [("content-type", "text/plain; charset=utf-8"),
                       ("content-length", str(len(body)))]  # fmt: skip
            return 403, headers, body
        return None


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        # Listening now: connections queue from the moment the URL is printed.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """Ctrl-C / SIGTERM stop the server (uvicorn handles them while it runs, then
    raises them again when it is done): here they end the command normally, exit 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ignore(signum: int, frame: Any) -> None:
        """The server has stopped already."""

    previous = {s: signal.signal(s, ignore) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(ctx: Context, args: argparse.Namespace) -> int:
    token: str | None = args.token or os.environ.get(_TOKEN_ENV) or None
    if token is not None and len(token) < MIN_TOKEN:
        raise CliError(
            f"the token is too short ({len(token)} characters, at least {MIN_TOKEN}): use e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    if not is_loopback_host(args.host):
        if not args.allow_remote or token is None:
            raise CliError(
                f"refusing to listen on {args.host}, which other machines can reach: add "
                f"--allow-remote and a --token (or ${_TOKEN_ENV}), or keep --host 127.0.0.1"
            )
    elif args.allow_remote and token is None:
        raise CliError(f"--allow-remote needs a --token (or ${_TOKEN_ENV})")
    try:
        import uvicorn
    except ImportError:
        raise CliError("needs uvicorn: pip install uvicorn") from None
    from ..dashboard import make_asgi_app

    storage = ctx.storage()
    leza = ctx.leza()
    with _listen(args.host, args.port) as sock:
        if leza.keyring.ephemeral:
            ctx.note("leza dashboard: no LEZA_SECRET_KEY: read-only (revoking would write an "
                     "audit row `leza verify` cannot check)")  # fmt: skip
        gate = Gate(
            allow_remote=args.allow_remote, token=token, can_revoke=not leza.keyring.ephemeral
        )
        app = gate.wrap(make_asgi_app(leza, authorize=gate.authorize))
        shown = f"[{args.host}]" if ":" in args.host else args.host
        url = f"http://{shown}:{sock.getsockname()[1]}/"
        # proxy_headers: behind a reverse proxy on this machine, the client is the
        # one it names, not loopback, so the loopback check still means "this machine".
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on",
            proxy_headers=True, forwarded_allow_ips="127.0.0.1,::1",
        )  # fmt: skip
        server = uvicorn.Server(config)
        print(f"Leza dashboard of {storage.describe()} at {url}", file=ctx.stdout)
        if token is not None:
            print(f"  the token is required: open {url}?token=TOKEN once, or send "
                  "'Authorization: Bearer TOKEN'", file=ctx.stdout)  # fmt: skip
        print("  Ctrl-C to stop", file=ctx.stdout, flush=True)
        if args.open:
            opened = url + (f"?token={token}" if token else "")
            threading.Thread(target=_open_when_started, args=(server, opened), daemon=True).start()
        with _signals_stop():
            server.run(sockets=[sock])
    if not server.started:
        raise CliError("the server did not start (see the messages above)")
    ctx.note("leza dashboard: stopped")
    return 0


def _open_when_started(server: Any, url: str) -> None:
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.started:
        webbrowser.open(url)
