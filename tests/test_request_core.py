"""The request core (``leza_middleware.core``), driven directly with plain inputs.

Every adapter (ASGI, WSGI, Django, Flask) goes through these steps; the
adapters' own suites check the translation, these check the steps: request
ids, cookies, refusals, permissions, the session cookie, the outcome and the
raw record, in both header flavours (ASGI bytes, CGI text).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from leza_middleware import Leza, Performer
from leza_middleware.core import Faults, Hooks, Request, RequestCore
from leza_middleware.core.answers import status_line
from leza_middleware.core.binding import needs_new_binding, refuse
from leza_middleware.core.flavour import header_case, merge_repeated
from leza_middleware.core.hooks import DEFAULT_REVOKED
from leza_middleware.core.routes import Endpoints, request_paths
from leza_middleware.permissions import Permissions, parse_rules
from leza_middleware.request_path import RAW_FIELDS
from leza_middleware.sessions.registry import (
    LOGIN_REASON,
    LOGOUT_REASON,
    REQUEST_ATTR,
    REQUEST_KEY,
    REVOKED_REASON,
    UNKNOWN_REASON,
)

HEX32 = re.compile(r"[0-9a-f]{32}")
RULES = {"Admin Permission": ["/admin/*"], "Report Permission": ["GET /reports"]}


@pytest.fixture
def leza(tmp_path: Path) -> Any:
    made = Leza(
        storage="memory://",
        geoip_db=False,
        secret_key="core-tests-secret-key-0123",
        spill_dir=str(tmp_path / "spill"),
        logout_routes=["GET /logout"],
        permissions=RULES,
        record_headers=["x-tenant"],
        flush_interval=3600,
    )
    yield made
    made.shutdown(2)


def core_of(leza: Leza, asgi: bool = True, **options: Any) -> tuple[RequestCore, list[Any]]:
    """A core whose records land in a list instead of the recorder's queue."""
    core = RequestCore.for_leza(leza, asgi=asgi, **options)
    records: list[Any] = []
    core.offer = records.append
    return core, records


def asgi_headers(**values: str) -> dict[bytes, bytes]:
    return {k.replace("_", "-").encode(): v.encode("latin-1") for k, v in values.items()}


def cgi_headers(**values: str) -> dict[str, str]:
    return {"HTTP_" + k.upper(): v for k, v in values.items()}


def begin(
    core: RequestCore,
    headers: Any,
    method: str = "GET",
    path: str = "/items",
    prefix: str = "",
    holder: dict[str, Any] | None = None,
    scheme: str = "http",
) -> tuple[Request, dict[str, Any], bool]:
    req = Request()
    holder = {} if holder is None else holder
    query = b"a=1" if core.flavour.asgi else "a=1"
    ok = core.begin(req, holder, headers, method, path, prefix, query, "10.0.0.1", scheme)
    return req, holder, ok


def as_record(raw: tuple[Any, ...]) -> dict[str, Any]:
    assert len(raw) == len(RAW_FIELDS)
    return dict(zip(RAW_FIELDS, raw, strict=True))


def signed_cookie(leza: Leza, session_key: str = "a-session-key-of-16+") -> tuple[str, str, str]:
    """A browser's Cookie header with a valid machine id and a session key."""
    mid, value = leza.cookies.new_machine_value()
    sid = leza.keyring.session_id(session_key.encode())
    return f"leza_mid={value}; leza_sid={session_key}", mid, sid


# --------------------------------------------------------------------------- request ids


@pytest.mark.parametrize("asgi", [True, False])
def test_request_id_reused_from_header_then_traceparent_else_new(leza: Leza, asgi: bool) -> None:
    core, _ = core_of(leza, asgi)
    h = asgi_headers if asgi else cgi_headers
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    cases = [
        (h(x_request_id="abc-123_XYZ.9"), "abc-123_XYZ.9"),
        (h(traceparent=f"00-{trace}-00f067aa0ba902b7-01"), trace),
        (h(x_request_id="bad id <script>", traceparent=f"00-{trace}-00f067aa0ba902b7-01"), trace),
        (h(traceparent=f"00-{'0' * 32}-00f067aa0ba902b7-01"), None),  # all-zero trace: new
        (h(x_request_id="x" * 129), None),
        (h(x_request_id="naïve-id"), None),  # beyond ASCII: never an id
        (h(), None),
    ]
    for headers, expected in cases:
        req, _, ok = begin(core, headers)
        assert ok
        rid = req.rid
        # One type per flavour: bytes for ASGI (the response header as is), text for CGI.
        assert isinstance(rid, bytes if asgi else str)
        text = rid.decode("ascii") if asgi else rid
        if expected is None:
            assert HEX32.fullmatch(text), text
        else:
            assert text == expected


def test_a_cgi_request_id_beyond_latin1_is_refused_not_crashed(leza: Leza) -> None:
    # A server against PEP 3333 hands over real text: it can never be an id.
    core, _ = core_of(leza, asgi=False)
    req, _, ok = begin(core, {"HTTP_X_REQUEST_ID": "id-\u2603"})
    assert ok
    assert HEX32.fullmatch(req.rid)


@pytest.mark.parametrize("asgi", [True, False])
def test_the_apps_own_request_id_is_stored_only_when_well_formed(leza: Leza, asgi: bool) -> None:
    core, _ = core_of(leza, asgi)
    req, _, _ = begin(core, {})
    ours = req.rid
    core.adopt_request_id(req, b"bad id\r\n" if asgi else "bad id\r\n")
    assert req.rid == ours
    mine = b"view-chose-this" if asgi else "view-chose-this"
    core.adopt_request_id(req, mine)
    assert req.rid == mine


def test_response_header_names_are_spelled_the_same_by_every_cgi_adapter() -> None:
    # Django spelled a custom header X-Correlation-Id, WSGI X-Correlation-ID.
    assert header_case("x-request-id") == "X-Request-ID"
    assert header_case("x-correlation-id") == "X-Correlation-ID"
    assert header_case("request-id") == "Request-ID"
    assert header_case("x-trace") == "X-Trace"


# --------------------------------------------------------------------------- cookies


@pytest.mark.parametrize("asgi", [True, False])
def test_machine_id_and_session_read_from_the_cookie_header(leza: Leza, asgi: bool) -> None:
    core, _ = core_of(leza, asgi)
    cookie, mid, sid = signed_cookie(leza)
    headers = asgi_headers(cookie=cookie) if asgi else cgi_headers(cookie=cookie)
    req, holder, _ = begin(core, headers)
    assert (req.mid, req.sid, req.cookie_sid) == (mid, sid, sid)
    assert holder[REQUEST_KEY] == {"session_id": sid}  # for leza.sessions.current_id()
    forged = cookie.replace("leza_mid=", "leza_mid=x")
    headers = asgi_headers(cookie=forged) if asgi else cgi_headers(cookie=forged)
    req, _, _ = begin(core, headers)
    assert req.mid is None  # a forged machine id is ignored, never trusted


def test_sessions_off_reads_no_session_in_any_adapter(tmp_path: Path) -> None:
    """ASGI and WSGI recorded a leftover leza_sid's session with sessions off; Django did not."""
    off = Leza(
        storage="memory://", geoip_db=False, secret_key="core-tests-secret-key-0123",
        spill_dir=str(tmp_path / "spill"), sessions=False, flush_interval=3600,
    )  # fmt: skip
    try:
        cookie, mid, _ = signed_cookie(off)
        for asgi in (True, False):
            core, _ = core_of(off, asgi)
            headers = asgi_headers(cookie=cookie) if asgi else cgi_headers(cookie=cookie)
            req, holder, _ = begin(core, headers)
            assert (req.mid, req.sid, holder) == (mid, None, {})
    finally:
        off.shutdown(1)


def test_a_framework_session_is_the_frameworks_not_leza_sid(leza: Leza) -> None:
    core, _ = core_of(leza, asgi=False, state_key=REQUEST_ATTR, framework_sessions=True)
    cookie, mid, _ = signed_cookie(leza)
    req, holder, _ = begin(core, cgi_headers(cookie=cookie))
    assert (req.mid, req.sid) == (mid, None)  # leza_sid is not Django's session
    core.framework_session(req, "django-session-key")
    expected = leza.keyring.session_id(b"django-session-key")
    assert req.sid == req.cookie_sid == expected
    assert holder[REQUEST_ATTR] == {"session_id": expected}
    assert core.session_key_id("django-session-key") == expected  # memoised, same id


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("asgi", [True, False])
def test_unreadable_headers_cost_the_record_not_the_authorization(leza: Leza, asgi: bool) -> None:
    class Broken(dict[Any, Any]):
        def get(self, key: Any, default: Any = None) -> Any:
            raise ValueError("header pairs that are not pairs")

    core, _ = core_of(leza, asgi)
    _, _, ok = begin(core, None, path="/public")
    assert not ok  # served unrecorded
    req, _, ok = begin(core, Broken(), path="/admin/users")
    assert ok  # still decided: anonymous, on no headers
    assert (req.needed, req.mid, req.sid, req.headers) == ("Admin Permission", None, None, {})
    assert core.faults.request_path_errors == 2


# --------------------------------------------------------------------------- endpoints


def test_paths_matched_as_the_app_sees_them_and_as_the_client_asked() -> None:
    assert request_paths("/api/logout", "/api") == ("/logout", "/api/logout")
    assert request_paths("/api", "/api") == ("/", "/api/")  # the mount's root
    assert request_paths("/logout", "") == ("/logout",)
    assert request_paths("", "") == ("/",)
    assert request_paths("/other", "/api") == ("/other",)  # a server that left the prefix out
    permissions = Permissions(parse_rules({"P": ["GET /r", "/admin/*"]}), "app")
    endpoints = Endpoints(("GET /logout", "/bye"), permissions)
    assert endpoints.is_logout("GET", ("/logout", "/api/logout"))
    assert endpoints.is_logout("POST", ("/x", "/bye"))
    assert not endpoints.is_logout("POST", ("/logout",))
    assert endpoints.required("HEAD", ("/r",)) == "P"  # HEAD needs what GET needs
    assert endpoints.required("POST", ("/r",)) is None
    assert endpoints.required("DELETE", ("/users", "/admin/users")) == "P"
    assert not Endpoints((), Permissions((), "app")).any  # nothing to match at all


def test_begin_marks_logout_routes_and_protected_endpoints(leza: Leza) -> None:
    core, _ = core_of(leza)
    req, _, _ = begin(core, {}, "GET", "/api/logout", prefix="/api")
    assert (req.logout, req.needed) == (True, None)
    req, _, _ = begin(core, {}, "GET", "/api/admin/x", prefix="/api")
    assert (req.logout, req.needed) == (False, "Admin Permission")
    # A websocket handshake is protected as a GET and is never a logout.
    req, _, _ = begin(core, {}, "WS", "/reports")
    assert (req.logout, req.needed) == (False, "Report Permission")
    req, _, _ = begin(core, {}, "WS", "/logout")
    assert req.logout is False
    # A core whose framework decides later leaves it to require().
    later, _ = core_of(leza, decide_at_begin=False)
    req, _, _ = begin(later, {}, "GET", "/admin/x")
    assert req.needed is None
    assert later.require(req, "") == "Admin Permission" == req.needed


# --------------------------------------------------------------------------- refusals


def test_a_revoked_session_is_refused_and_its_cookie_cleared(leza: Leza) -> None:
    core, records = core_of(leza)
    cookie, _, sid = signed_cookie(leza)
    req, _, _ = begin(core, asgi_headers(cookie=cookie))
    assert not core.refused(req)  # loads the blocklist: nothing ended yet
    leza.sessions.blocklist.add([sid], block=True)
    req, _, _ = begin(core, asgi_headers(cookie=cookie))
    assert core.refused(req)
    assert (req.action, req.reason) == ("denied", REVOKED_REASON)
    status, headers, body = core.revoked_answer(req, native=None)
    assert (status, body) == (401, DEFAULT_REVOKED[2])
    assert (b"x-request-id", req.rid) in headers
    assert (b"content-length", str(len(body)).encode()) in headers
    assert any(k == b"set-cookie" and v.startswith(b"leza_sid=;") for k, v in headers)
    core.finish(req)
    record = as_record(records[-1])
    assert (record["status"], record["action"], record["reason"]) == (401, "denied", REVOKED_REASON)
    assert record["session_id"] == sid


def test_an_async_refusal_awaits_the_blocklist_and_agrees(leza: Leza) -> None:
    core, _ = core_of(leza)
    cookie, _, sid = signed_cookie(leza)
    leza.sessions.blocklist.add([sid], block=True)
    req, _, _ = begin(core, asgi_headers(cookie=cookie))
    assert asyncio.run(core.arefused(req))  # the first decision loads, without blocking
    req, _, _ = begin(core, asgi_headers(cookie=cookie))
    assert asyncio.run(core.arefused(req))  # then the in-memory fast path
    assert req.reason == REVOKED_REASON


def test_an_unknown_session_state_is_refused_but_keeps_its_cookies(tmp_path: Path) -> None:
    from leza_middleware.storage.memory import MemoryStorage

    class Unreachable(MemoryStorage):
        def query(self, kind: str, flt: Any) -> Any:
            raise ConnectionError("storage is down (test)")

    storage = Unreachable()
    leza = Leza(
        storage=storage, geoip_db=False, secret_key="core-tests-secret-key-0123",
        spill_dir=str(tmp_path / "spill"), revocation_load_timeout=0.2, flush_interval=3600,
    )  # fmt: skip
    try:
        core, _ = core_of(leza, asgi=False)
        cookie, _, _ = signed_cookie(leza)
        signed_out: list[str] = []
        req, _, _ = begin(core, cgi_headers(cookie=cookie))
        assert core.refused(req)
        assert req.reason == UNKNOWN_REASON
        status, headers, _ = core.revoked_answer(req, None, lambda: signed_out.append("x") or [])
        assert status == 401
        assert not any(k == "Set-Cookie" for k, _ in headers)
        assert signed_out == []  # the framework's sign-out is for revoked sessions only
    finally:
        leza.shutdown(1)


@pytest.mark.parametrize(
    "answer",
    [
        (999, [], b"x"),  # not an HTTP status
        (401, [("X-Evil", "a\r\nSet-Cookie: pwned=1")], b"x"),  # header splitting
        (401, [("Bad Name", "v")], b"x"),
        (401, [("X-Snow", "\u2603")], b"x"),  # beyond latin-1
        (401, [("X-Ok", "v")], "text, not bytes"),
        (401, [(b"x-bytes", b"v")], b"x"),
        None,  # the handler raises
    ],
)
def test_an_unusable_revoked_response_becomes_the_default_401(answer: Any) -> None:
    def handler(request: Any) -> Any:
        if answer is None:
            raise RuntimeError("handler bug")
        return answer

    hooks = Hooks(None, handler, Faults())
    assert hooks.revoked(object()) == DEFAULT_REVOKED


def test_a_revoked_response_is_sent_with_a_content_length_of_its_body(leza: Leza) -> None:
    seen: list[Any] = []

    def teapot(request: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        seen.append(request)
        return 418, [("Content-Type", "text/plain"), ("Content-Length", "999")], b"no tea"

    core, _ = core_of(leza, asgi=False)
    core.hooks = Hooks(None, teapot, core.faults)
    cookie, _, sid = signed_cookie(leza)
    leza.sessions.blocklist.add([sid], block=True)
    req, _, _ = begin(core, cgi_headers(cookie=cookie))
    assert core.refused(req)
    native = object()
    status, headers, body = core.revoked_answer(req, native, lambda: [("Set-Cookie", "fw=; a")])
    assert (status, body, seen) == (418, b"no tea", [native])
    assert ("Content-Length", "6") in headers
    assert ("Content-Length", "999") not in headers
    assert ("Set-Cookie", "fw=; a") in headers  # the framework's own sign-out
    assert ("X-Request-ID", req.rid) in headers
    assert status_line(418) == "418 I'm a Teapot"
    assert status_line(299) == "299 Unknown"


# --------------------------------------------------------------------------- permissions


def test_a_permission_decided_allowed_denied_or_failing(leza: Leza) -> None:
    core, records = core_of(leza)
    req, _, _ = begin(core, {}, path="/admin/users")
    assert (
        core.decide(req, Performer(id="u1", permissions=frozenset({"Admin Permission"})), None)
        is None
    )
    assert req.granted
    assert req.granted.startswith("User has the permission Admin Permission")
    req.status = 200
    core.finish(req)
    assert as_record(records[-1])["reason"] == req.granted
    # Denied: 403 for a signed-in performer, 401 for nobody; JSON {"detail": reason}.
    req, _, _ = begin(core, {}, path="/admin/users")
    status, headers, body = core.decide(req, Performer(id="u2"), None)  # type: ignore[misc]
    assert status == 403
    assert json.loads(body) == {"detail": req.reason}
    assert (b"content-type", b"application/json") in headers
    assert (req.action, req.performer, req.status) == ("denied", Performer(id="u2"), 403)
    req, _, _ = begin(core, {}, path="/admin/users")
    assert core.decide(req, None, None)[0] == 401  # type: ignore[index]
    # A refused logout route ends nothing.
    req, _, _ = begin(core, {}, "GET", "/logout")
    req.needed = "Admin Permission"
    core.decide(req, None, None)
    assert req.logout is False


def test_a_has_permission_hook_that_raises_marks_a_500(leza: Leza) -> None:
    def broken(performer: Performer, request: Any, permission: str) -> bool:
        raise LookupError("directory down")

    core, _ = core_of(leza, permissions=Permissions(parse_rules(RULES), "app", broken))
    req, _, _ = begin(core, {}, path="/admin/users")
    with pytest.raises(LookupError):
        core.decide(req, Performer(id="u1"), None)
    assert (req.status, req.error, req.performer) == (500, "LookupError", Performer(id="u1"))


# --------------------------------------------------------------------------- cookies out


@pytest.mark.parametrize("asgi", [True, False])
def test_cookies_set_when_the_response_starts(leza: Leza, asgi: bool) -> None:
    core, _ = core_of(leza, asgi)
    h = asgi_headers if asgi else cgi_headers
    set_cookie = b"set-cookie" if asgi else "Set-Cookie"

    def cookies(out: Any) -> list[str]:
        return [v.decode() if asgi else v for k, v in out if k == set_cookie]

    # An API client (no cookies, no page): nothing, not even a machine id.
    req, _, _ = begin(core, h(accept="*/*"))
    assert list(core.settle(req, None)) == []
    assert req.mid is None
    # A browser asking for a page over https: a Secure machine id.
    req, _, _ = begin(core, h(accept="text/html,*/*"), scheme="https")
    [mid] = cookies(core.settle(req, None))
    assert mid.startswith("leza_mid=")
    assert "Secure" in mid
    assert req.mid in mid
    assert list(core.settle(req, None)) == []  # once
    # A signed-in user without a session: one starts, named in the session API's state.
    req, holder, _ = begin(core, h(accept="*/*"))
    [sid_cookie] = cookies(core.settle(req, Performer(id="u1")))
    assert sid_cookie.startswith("leza_sid=")
    assert holder[REQUEST_KEY]["session_id"] == req.sid
    assert req.sid is not None


def test_session_cookie_rotated_kept_or_cleared(leza: Leza) -> None:
    core, _ = core_of(leza)
    cookie, mid, sid = signed_cookie(leza)
    alice = Performer(id="alice")

    def settled(path: str = "/items", **state: Any) -> tuple[Request, list[bytes]]:
        holder: dict[str, Any] = {}
        req, holder, _ = begin(core, asgi_headers(cookie=cookie), path=path, holder=holder)
        holder[REQUEST_KEY].update(state)
        out = core.settle(req, alice)
        return req, [v for k, v in out if k == b"set-cookie"]

    req, out = settled()
    assert (req.sid, out) == (sid, [])  # a signed-in request keeps its session
    req, out = settled(new_session=True, action="login", reason=LOGIN_REASON)
    assert req.sid != sid
    assert out[0].startswith(b"leza_sid=")
    req, out = settled("/logout")
    assert req.sid == sid
    assert out[0].startswith(b"leza_sid=;")
    req, out = settled(end_session=True)
    assert req.sid == sid
    assert out[0].startswith(b"leza_sid=;")
    req, out = settled(bound=True, session_id="bound-elsewhere")
    assert (req.sid, out) == ("bound-elsewhere", [])  # the framework's session carries it
    req, out = settled(revoked=True)
    assert out == [b"leza_sid=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"]
    leza.sessions.blocklist.add([sid], block=False)  # timed out, not enforced
    req, out = settled()
    assert req.sid != sid
    assert out[0].startswith(b"leza_sid=")
    assert req.mid == mid  # the machine id it came with


# --------------------------------------------------------------------------- the record


@pytest.mark.parametrize("asgi", [True, False])
def test_the_raw_record_in_field_order(leza: Leza, asgi: bool) -> None:
    core, records = core_of(leza, asgi)
    h = asgi_headers if asgi else cgi_headers
    headers = h(
        user_agent="curl/8", x_forwarded_for="1.2.3.4", forwarded="for=5.6.7.8",
        host="example.com", x_tenant="acme", authorization="Bearer secret",
    )  # fmt: skip
    req, _, _ = begin(core, headers, "POST", "/api/items/7", prefix="/api")
    req.status = 201
    req.end = req.start + 0.25
    req.performer = Performer(id="u1")
    core.finish(req, "/items/<int:item_id>")
    record = as_record(records[-1])
    text = (lambda v: v.encode()) if asgi else (lambda v: v)
    assert record == {
        "ts": req.ts,
        "duration": 0.25,
        "status": 201,
        "request_id": req.rid,
        "method": "POST",
        "path": "/api/items/7",
        "query": text("a=1"),
        "peer": "10.0.0.1",
        "scheme": "http",
        "route": "/items/{item_id}",
        "user_agent": text("curl/8"),
        "x_forwarded_for": text("1.2.3.4"),
        "forwarded": text("for=5.6.7.8"),
        "host": text("example.com"),
        "performer": Performer(id="u1"),
        "error": None,
        "action": None,
        "reason": None,
        "machine_id": None,
        "session_id": None,
        "headers": ("x-tenant", text("acme")),  # only the allowed ones
    }


def test_the_outcome_refusal_then_session_api_then_logout_then_permission(leza: Leza) -> None:
    core, records = core_of(leza)

    def record(path: str = "/items", status: int = 200, **setup: Any) -> dict[str, Any]:
        req, holder, _ = begin(core, {}, path=path)
        state = setup.pop("state", None)
        if state is not None:
            holder[REQUEST_KEY] = state
        for name, value in setup.items():
            setattr(req, name, value)
        req.status = status
        core.finish(req)
        return as_record(records[-1])

    assert record(status=0)["status"] == 500  # the app never started a response
    logout = record("/logout")
    assert (logout["action"], logout["reason"]) == ("logout", LOGOUT_REASON)
    bob = Performer(id="bob")
    login = record(
        "/logout", state={"action": "login", "reason": LOGIN_REASON, "performer": bob},
        performer=Performer(id="other"),
    )  # fmt: skip
    assert (login["action"], login["reason"], login["performer"]) == ("login", LOGIN_REASON, bob)
    granted = record(granted="User has the permission P …")
    assert granted["reason"] == "User has the permission P …"
    assert record(status=404, granted="User has the permission P …")["reason"] is None
    denied = record(status=403, action="denied", reason="User lacks the permission P …")
    assert (denied["action"], denied["reason"]) == ("denied", "User lacks the permission P …")


def test_a_framework_session_is_not_recorded_for_an_anonymous_request(leza: Leza) -> None:
    core, records = core_of(leza, asgi=False, state_key=REQUEST_ATTR, framework_sessions=True)
    for performer, settled_sid, expected in [
        (None, "s1", None),  # Django keeps sessions for anonymous visitors too
        (Performer(id="u1"), "s1", "s1"),
    ]:
        req, _, _ = begin(core, {})
        req.sid, req.settled, req.performer, req.status = settled_sid, True, performer, 200
        core.finish(req)
        assert as_record(records[-1])["session_id"] == expected
    # A refused session is named by its refusal, anonymous as it is.
    req, _, _ = begin(core, {})
    req.sid, req.settled, req.status = "s2", True, 401
    req.action, req.reason = "denied", REVOKED_REASON
    core.finish(req)
    assert as_record(records[-1])["session_id"] == "s2"


def test_finishing_never_raises(leza: Leza) -> None:
    core, _ = core_of(leza)

    def broken(record: Any) -> None:
        raise RuntimeError("queue bug")

    core.offer = broken
    req, _, _ = begin(core, {})
    core.finish(req)
    assert core.faults.request_path_errors == 1


# --------------------------------------------------------------------------- helpers


def test_repeated_asgi_header_lines_are_one_value() -> None:
    raw = [
        (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"),
        (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"user-agent", b"first"),
        (b"user-agent", b"last"), (b"x-tenant", b"a"), (b"x-tenant", b"c"), (b"x-other", b"o"),
    ]  # fmt: skip
    merged = merge_repeated(raw, (b"x-tenant",))
    assert merged == {
        b"x-forwarded-for": b"1.1.1.1,2.2.2.2",  # a proxy chain walked whole
        b"cookie": b"a=1; b=2",  # HTTP/2 splits Cookie
        b"user-agent": b"last",  # not a list: the last line, as dict() keeps it
        b"x-tenant": b"a, c",  # a recorded header, comma-joined
        b"x-other": b"o",
    }


def test_the_performer_hook_is_guarded_and_counted() -> None:
    faults = Faults()
    hooks = Hooks(lambda request: {"id": request}, None, faults)
    assert hooks.performer("u7") == Performer(id="u7")
    broken = Hooks(lambda request: 1 / 0, None, faults)
    assert broken.performer("x") is None
    assert faults.performer_hook_errors == 1
    assert Hooks(None, None, faults).performer("x") is None


def test_binding_decisions(leza: Leza) -> None:
    state: dict[str, Any] = {}
    assert refuse(state, "s1", REVOKED_REASON) is True
    assert state == {"action": "denied", "reason": REVOKED_REASON, "session_id": "s1",
                     "revoked": True}  # fmt: skip
    assert refuse({}, "s1", UNKNOWN_REASON) is False  # probably valid: not signed out
    assert needs_new_binding(leza.sessions, {}, None)
    assert needs_new_binding(leza.sessions, {"new_session": True}, "s1")
    assert not needs_new_binding(leza.sessions, {}, "s1")
