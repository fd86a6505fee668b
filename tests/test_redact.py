"""leza_middleware.redact: which keys are secrets; redaction of queries, URLs, text, records.

Pure functions, tested directly: every form a secret can take (nested keys,
percent-encoding once or twice, URL-valued parameters, log-line spellings,
nested records), each with its look-alikes that must be kept. The same rules
through real apps and storage: tests/test_redact_apps.py and
tests/test_secrets_property.py.
"""

from __future__ import annotations

import json
from urllib.parse import quote, unquote

import pytest

from leza_middleware import Leza, LezaConfigError
from leza_middleware.config import Settings
from leza_middleware.privacy import parse_record_headers
from leza_middleware.redact import (
    CONTAINS_NAMES,
    DEFAULT,
    EXACT_NAMES,
    FILTERED,
    SUFFIX_NAMES,
    Redactor,
    key_names,
    looks_like_credential,
    normalise_name,
)

F = FILTERED
# "password" in full-width letters (NFKC makes it ASCII)
WIDE = "".join(chr(ord(c) + 0xFEE0) for c in "password")

# --------------------------------------------------------------------------- names

SECRET_KEYS = [
    # the probe's spellings
    "user[password]", "password[]", "a[b][password]", "a.password", "a[0][token]",
    "user%5Bpassword%5D", "user%255Bpassword%255D", "user%25255Bpassword%25255D",
    "Pass%77ord", "pass+word", "pass word", "PASSWORD", "Password", "pAsSwOrD",
    # separators and case
    "Access-Token", "access_token", "ACCESS.TOKEN", "access token", "accessToken",
    "X-Api-Key", "x_api_key", "api.key", "apiKey", "client_secret", "clientSecret",
    # plural, numbered, affixed
    "tokens", "secrets[]", "new_password1", "password2", "password_confirmation",
    "current-password", "password_hash", "api_key_2",
    # the added names
    "passphrase", "pin", "PIN", "pincode", "credential", "credentials", "X-Amz-Credential",
    "bearer", "session", "sessionid", "JSESSIONID", "PHPSESSID", "sid", "sig", "signature",
    "X-Amz-Signature", "otp", "totp", "code", "authcode", "code_verifier", "private_key",
    "rsa_private_key", "jwt", "id_token", "id_token_hint", "refresh_token", "auth", "oauth",
    "basic_auth", "authorization", "proxy-authorization", "cookie", "set-cookie", "csrf",
    "_csrf", "xsrf", "X-CSRF-Token", "csrfmiddlewaretoken", "authenticity_token", "key",
    "secret_key", "aws_secret_access_key", "hmac", "passcode", "ssn", "cvv", "credit_card",
    # Unicode: full-width letters, a dotted capital I
    WIDE, "user\uff3bpassword\uff3d", "P\u0130N",
    # a decoded key means what follows its last delimiter
    "https%3A%2F%2Fa%2Fb%3Fcode", "db:password", "config/api_key",
]  # fmt: skip

NOT_SECRET_KEYS = [
    "position", "spinner", "spin", "pinned", "pinterest", "keyboard", "monkey", "hotkey",
    "keyword", "sort_key", "cache_key", "signup", "sigma", "side", "inside", "sidebar",
    "author", "authority", "codec", "zipcode", "country_code", "encode", "passage", "compass",
    "bypass", "secretary", "tokenizer", "token_type", "expires_in", "session_count",
    "cookie_consent",
    "sessions", "page", "sort", "q", "state", "next", "redirect", "redirect_uri", "email",
    "user", "name", "id", "lang", "utm_source", "access_token_expires_at", "a[0]", "",
    "%", "%%", "[]", "...",
]  # fmt: skip


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys(key: str) -> None:
    assert DEFAULT.is_secret(key), key_names(key)


@pytest.mark.parametrize("key", NOT_SECRET_KEYS)
def test_keys_that_only_look_like_secrets(key: str) -> None:
    assert not DEFAULT.is_secret(key), key_names(key)


def test_key_names_normalise_decoding_case_separators_and_paths() -> None:
    assert key_names("user[password]") == ["user", "password", "userpassword"]
    assert key_names("password[]") == ["password"]
    assert key_names("a[0][token]") == ["a", "token", "atoken"]
    assert key_names("user%255Bpassword%255D") == ["user", "password", "userpassword"]
    assert key_names("X-Api_Key") == ["xapikey"]
    assert key_names("api.key") == ["api", "key", "apikey"]
    assert key_names("new_password1") == ["newpassword"]
    assert key_names("https%3A%2F%2Fa%2Fb%3Fcode") == ["code"]
    assert key_names(WIDE) == ["password"]
    # Decoding is bounded: five levels deep is not decoded to the end.
    deep = "user" + quote(quote(quote(quote(quote("[password]", safe="")))))
    assert "password" not in key_names(deep)
    assert normalise_name("X-Api_Key") == "xapikey"


def test_the_lists_hold_what_the_issue_names() -> None:
    names = set(EXACT_NAMES) | set(SUFFIX_NAMES) | set(CONTAINS_NAMES)
    for name in ("passphrase", "pin", "credential", "bearer", "session", "sessionid", "sid",
                 "sig", "signature", "otp", "code", "secret", "privatekey", "jwt", "auth",
                 "cookie", "csrf", "xsrf", "key", "password", "token", "apikey"):  # fmt: skip
        assert name in names
    # Everything that was filtered before still is (nothing dropped silently).
    before = {
        "password", "passwd", "pwd", "pass", "secret", "token", "accesstoken", "refreshtoken",
        "idtoken", "apikey", "key", "auth", "authorization", "sessionid", "session", "sid",
        "code", "signature", "sig", "jwt", "clientsecret", "privatekey", "otp", "csrftoken",
        "xsrftoken", "passwordhash", "pin", "ssn", "creditcard", "cvv", "xauthtoken",
        "proxyauthorization", "setcookie", "cookie", "xapikey",
    }  # fmt: skip
    assert all(DEFAULT.is_secret(name) for name in before)


def test_record_fields_code_and_key_are_filtered_when_they_hold_a_credential() -> None:
    # In a URL, ?code= is an OAuth code and ?key= an API key; a record's "code"
    # (a country's) and "key" (a settings row's) are usually identifiers, but an
    # API token's key or an OAuth grant's code is the credential itself.
    for name in ("code", "key"):
        assert DEFAULT.is_secret(name)
        assert not DEFAULT.is_secret_field(name)
    for name in ("password", "api_key", "pin", "session_key", "otp_secret", "token"):
        assert DEFAULT.is_secret_field(name)
    state = {
        "code": "FR",
        "key": "site.theme",
        "sku": {"code": "SKU-2024-001"},
        "token_row": {"key": "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", "user": 7},
        "grant": {"code": "SplxlOBeZQQYbYS6WxSbIA"},
        "secret_key": "x",
    }
    assert DEFAULT.mask(state) == {
        "code": "FR",
        "key": "site.theme",
        "sku": {"code": "SKU-2024-001"},
        "token_row": {"key": F, "user": 7},
        "grant": {"code": F},
        "secret_key": F,
    }
    changes = {"key": {"before": None, "after": "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"}}
    assert DEFAULT.mask_diff(changes) == {"key": {"before": F, "after": F}}
    assert DEFAULT.mask_diff({"code": {"before": "FR", "after": "DE"}})["code"]["after"] == "DE"
    # Advisory details: a rule's own "key" (the performer or IP a burst is about) stays.
    details = {"by": "performer", "key": "3f2b9c1e-7d4a-4b8e-9f00-1a2b3c4d5e6f"}
    assert DEFAULT.mask(details, ambiguous=False) is details
    assert looks_like_credential("9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b")
    for value in ("FR", "site.theme", "abcdefghijklmnopqrstuvwxyz", "1234567890123456789", 42):
        assert not looks_like_credential(value)


def test_added_names_apply_everywhere() -> None:
    r = Redactor(["email", "X-Tenant-SSN", "code"])
    assert r.is_secret("user[email]")
    assert r.is_secret_field("Email")
    assert r.is_secret_field("code")  # named by the deployment: a field too
    assert r.is_secret("x_tenant_ssn")
    assert not DEFAULT.is_secret("user[email]")
    assert r.redact_query("email=a%40b.example&page=2") == f"email={F}&page=2"
    assert r.scrub_text('{"email": "a@b.example"}') == f'{{"email": "{F}"}}'


def test_settings_add_names_and_refuse_empty_ones() -> None:
    s = Settings.resolve({"redact_query_keys": "E-mail, ssn_last4"})
    assert s.redact_query_keys == frozenset({"email", "ssnlast4"})
    for setting in ("redact_query_keys", "audit_mask"):
        with pytest.raises(LezaConfigError, match=setting):
            Settings.resolve({setting: ["ok", "--"]})


# --------------------------------------------------------------------------- queries

QUERIES = {
    # the probe's findings
    "user[password]=hunter2&page=2": f"user[password]={F}&page=2",
    "password[]=a&password[]=b&x=1": f"password[]={F}&password[]={F}&x=1",
    "a[b][password]=x&a[0][token]=y&a.password=z":
        f"a[b][password]={F}&a[0][token]={F}&a.password={F}",
    "user%5Bpassword%5D=x&user%255Bpassword%255D=y":
        f"user%5Bpassword%5D={F}&user%255Bpassword%255D={F}",
    "next=/cb?token=abc&page=2": f"next=/cb?token={F}&page=2",
    "next=/cb?a=1;token=abc": f"next=/cb?a=1;token={F}",
    "next=%2Fcb%3Ftoken%3Dabc&page=2": f"next=%2Fcb%3Ftoken%3D{F}&page=2",
    "redirect=https%3A%2F%2Fa.example%2Fb%3Fcode%3Dxyz%26state%3D1":
        f"redirect=https%3A%2F%2Fa.example%2Fb%3Fcode%3D{F}%26state%3D1",
    "r=https%253A%252F%252Fa%252Fb%253Fcode%253Dxyz%2526lang%253Den":
        f"r=https%253A%252F%252Fa%252Fb%253Fcode%253D{F}%2526lang%253Den",
    # a URL inside a URL inside a URL
    "next=https%3A%2F%2Fa%2Fcb%3Fnext%3Dhttps%253A%252F%252Fb%252Fc%253Ftoken%253Dv%2526z%253D2":
        f"next=https%3A%2F%2Fa%2Fcb%3Fnext%3Dhttps%253A%252F%252Fb%252Fc%253Ftoken%253D{F}%2526z%253D2",
    # partly encoded: what came unencoded stays so
    "redirect=https://a/cb%3Faccess_token%3Dsecret%26state%3D1":
        f"redirect=https://a/cb%3Faccess_token%3D{F}%26state%3D1",
    # fragments (an OAuth implicit flow's) and userinfo
    "r=https://a/cb%23access_token%3Dsecret%26state%3D1": f"r=https://a/cb%23access_token%3D{F}%26state%3D1",
    "r=https://a/cb#access_token=secret": f"r=https://a/cb#access_token={F}",
    "u=https://user:pa55@host/x": f"u=https://user:{F}@host/x",
    "u=https%3A%2F%2Fuser%3Apa55%40host%2Fx": f"u=https%3A%2F%2Fuser%3A{F}%40host%2Fx",
    "dsn=postgresql%3A%2F%2Fapp%3As3cr3t%40db%2Fx": f"dsn=postgresql%3A%2F%2Fapp%3A{F}%40db%2Fx",
    # JSON and text inside a value
    "variables=%7B%22password%22%3A%22x%22%2C%22n%22%3A1%7D":
        f"variables=%7B%22password%22%3A%22{F}%22%2C%22n%22%3A1%7D",
    'filter={"token":"x","n":1}': f'filter={{"token":"{F}","n":1}}',
    "q=password%3A%20hunter2": f"q=password%3A%20{F}",
    "h=Bearer%20abcdef123": f"h=Bearer%20{F}",
    "state=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2ln": f"state={F}",
    # a key without a value that is a pair once decoded; a nested unencoded pair
    "token%3Dabc&page=2": f"token%3D{F}&page=2",
    "next=token=abc": f"next=token={F}",
    # already filtered: unchanged
    f"token={F}&next=/cb?code={F}": f"token={F}&next=/cb?code={F}",
}  # fmt: skip

PLAIN_QUERIES = [
    "position=1&spinner=x&keyboard=1&pinned=1&monkey=2",
    "page=2&sort=name&dir=asc",
    "q=hello%20world&lang=en",
    "redirect_uri=https%3A%2F%2Fapp.example%2Fcb&state=xyz",
    "next=/items?page=2&sort=-name",
    "filter[status]=open&filter[id]=7",
    "t=12:30:00&tz=Europe%2FBerlin",
    "u=https://host:8443/x",
    "email=a%40b.example",
    "x=%ZZ&y=50%",
    "token",  # no value
    "",
]


@pytest.mark.parametrize(("query", "expected"), QUERIES.items())
def test_query_values_of_secret_keys_are_filtered(query: str, expected: str) -> None:
    assert DEFAULT.redact_query(query) == expected
    assert DEFAULT.redact_query(expected) == expected  # idempotent
    assert DEFAULT.redact_query(query.encode("latin-1")) == expected


@pytest.mark.parametrize("query", PLAIN_QUERIES)
def test_a_query_without_secrets_is_kept_as_it_is(query: str) -> None:
    assert DEFAULT.redact_query(query) is query


def test_a_reencoded_value_decodes_like_the_original_except_the_secret() -> None:
    # Lower-case escapes, "+" and "~" in the value: decoding the stored value
    # gives the original with only the secret replaced.
    value = "https%3a%2f%2fa.example%2fb%3fcode%3dxyz%26q%3dtwo+words%26t%3d~x"
    out = DEFAULT.redact_query(f"r={value}")
    assert out.startswith("r=")
    assert unquote(out[2:]) == unquote(value).replace("xyz", F)


# --------------------------------------------------------------------------- URLs

URLS = {
    "https://app.example/reset?token=abc&lang=en": f"https://app.example/reset?token={F}&lang=en",
    "https://u:pw@app.example/x?a=1": f"https://u:{F}@app.example/x?a=1",
    "https://app.example/cb#access_token=abc&state=1": f"https://app.example/cb#access_token={F}&state=1",
    "https://app.example/login?next=%2Fcb%3Fsid%3Dabc": f"https://app.example/login?next=%2Fcb%3Fsid%3D{F}",
    "/cb?user[password]=x": f"/cb?user[password]={F}",
}  # fmt: skip


@pytest.mark.parametrize(("url", "expected"), URLS.items())
def test_urls(url: str, expected: str) -> None:
    assert DEFAULT.redact_url(url) == expected
    assert DEFAULT.redact_header(url) == expected


def test_urls_and_headers_without_secrets_are_kept() -> None:
    for url in ("https://app.example/", "https://app.example:8443/a?b=1#top", "https://a.example"):
        assert DEFAULT.redact_url(url) is url
    for value in ("en-GB,en;q=0.9", "acme", "for=192.0.2.1;proto=https"):
        assert DEFAULT.redact_header(value) is value
    assert DEFAULT.redact_header("Bearer abc.def.ghi") == f"Bearer {F}"


def test_path_parameters() -> None:
    # Servlet containers rewrite URLs with the session id as a path parameter.
    assert DEFAULT.redact_path("/cart;jsessionid=ABC123/x;v=1") == f"/cart;jsessionid={F}/x;v=1"
    assert DEFAULT.redact_path("/a;b/c;token=x;y=2") == f"/a;b/c;token={F};y=2"
    for path in ("/items/7", "/a;b", "/m;v=1;lang=en", "/"):
        assert DEFAULT.redact_path(path) is path


# --------------------------------------------------------------------------- text

TEXTS = {
    # the probe's log line: both keys filtered alike
    "password: hunter2 Authorization: Bearer abc.def": f"password: {F} Authorization: {F}",
    "login failed password=hunter2 user=bob": f"login failed password={F} user=bob",
    "login password = 'hunter 2', user=bob": f"login password = '{F}', user=bob",
    'token="a b c"': f'token="{F}"',
    "token => 'abc'": f"token => '{F}'",
    "--password=hunter2 --user bob": f"--password={F} --user bob",
    "export API_TOKEN='x y z'": f"export API_TOKEN='{F}'",
    'User(password="pw", name="x")': f'User(password="{F}", name="x")',
    "x.y.token = abc; b=2": f"x.y.token = {F}; b=2",
    "user[password]=x": f"user[password]={F}",
    f"{WIDE}: x": f"{WIDE}: {F}",
    # JSON and Python reprs
    '{"password": "x", "user": "bob"}': f'{{"password": "{F}", "user": "bob"}}',
    "{'password': 'x', 'user': 'bob'}": f"{{'password': '{F}', 'user': 'bob'}}",
    '{"user": {"password": "x", "pin": 1234}}': f'{{"user": {{"password": "{F}", "pin": {F}}}}}',
    '{"tokens": ["a", "b"], "n": 1}': f'{{"tokens": {F}, "n": 1}}',
    '"credentials": {"aws": {"id": "AK", "v": "S"}}, "ok": 1': f'"credentials": {F}, "ok": 1',
    '{"user[password]": "x"}': f'{{"user[password]": "{F}"}}',
    '{"password": "esc\\"aped", "n": 1}': f'{{"password": "{F}", "n": 1}}',
    "{b'password': b'x'}": f"{{b'password': b'{F}'}}",
    '"password": "cut off… [120 more]': f'"password": "{F}',
    # headers as logged: a dict, a list of pairs (ASGI scope, WSGI), header lines
    "{'authorization': 'Bearer abc', 'accept': 'text/html'}":
        f"{{'authorization': '{F}', 'accept': 'text/html'}}",
    "[(b'authorization', b'Bearer zzz'), (b'cookie', b'a=1; b=2'), (b'host', b'x')]":
        f"[(b'authorization', b'{F}'), (b'cookie', b'{F}'), (b'host', b'x')]",
    "[('Cookie', 'sid=1'), ('Accept', '*/*')]": f"[('Cookie', '{F}'), ('Accept', '*/*')]",
    "Cookie: sessionid=s3cr3t; theme=dark": f"Cookie: {F}",
    "Set-Cookie: a=1; Path=/; HttpOnly\nnext": f"Set-Cookie: {F}\nnext",
    "x-api-key: k-123": f"x-api-key: {F}",
    "Proxy-Authorization: Basic dXNlcjpwYXNz": f"Proxy-Authorization: {F}",
    "token=Bearer abcdef": f"token={F}",
    "retry with bearer abcdef123456": f"retry with bearer {F}",
    "header Basic dXNlcjpwYXNzd29yZA==": f"header Basic {F}",
    # URLs in messages
    "GET /cb?code=abc123&state=x&access_token=T0KEN": f"GET /cb?code={F}&state=x&access_token={F}",
    "redirect to https://a/cb?next=https%3A%2F%2Fb%2Fc%3Ftoken%3Dabc done":
        f"redirect to https://a/cb?next=https%3A%2F%2Fb%2Fc%3Ftoken%3D{F} done",
    "DSN postgresql://app:s3cret@db:5432/x": f"DSN postgresql://app:{F}@db:5432/x",
    "redis://:s3cret@cache:6379/0": f"redis://:{F}@cache:6379/0",
    # other shapes
    "<login><password>x</password><user>bob</user></login>":
        f"<login><password>{F}</password><user>bob</user></login>",
    "id_token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl issued": f"id_token {F} issued",
    "sid:abc session: xyz": f"sid:{F} session: {F}",
    "status code=200": f"status code={F}",
}  # fmt: skip

PROSE = [
    "Basic information about keyword=value",
    "user=alice page=2 monkey=1 keyboard=2 position=3",
    "at 12:30: done in 5ms",
    "https://example.com:8080/x?page=2",
    "Error: password mismatch for user bob",  # says nothing secret
    "the token expired",
    "spin=3 pinned=true",
    "tokens left: none",  # the key is "left"
    "{'user': 'bob', 'n': 1}",
    "caf\u00e9 50% done, 100%",
    "",
]


@pytest.mark.parametrize(("text", "expected"), TEXTS.items())
def test_text_forms(text: str, expected: str) -> None:
    assert DEFAULT.scrub_text(text) == expected
    assert DEFAULT.scrub_text(expected) == expected  # idempotent


@pytest.mark.parametrize("text", PROSE)
def test_prose_is_kept(text: str) -> None:
    assert DEFAULT.scrub_text(text) is text


def test_hostile_text_is_handled_in_bounded_time() -> None:
    # Shapes that would make a careless pattern quadratic, 200 KB each; each
    # must come back, with its secret filtered where there is one.
    n = 200_000
    cases = [
        "a" * n + " %41",
        "a" * n + "=" + "b" * n,
        " a" * (n // 2) + "=x",
        "password=" + "x" * n,
        '"' * n,
        '"password": [' * 1000,
        "%25" * (n // 3),
        "(" * n,
        "x:" * (n // 2),
        "https://" + "a" * n,
        "https://a:" + "b" * n,
        "%" + "ab%3D" * (n // 5),
        "<" + "a" * n,
        "Basic " + "a" * n,
    ]
    for text in cases:
        out = DEFAULT.scrub_text(text)
        assert isinstance(out, str)
        DEFAULT.redact_query(text)
    assert DEFAULT.scrub_text("password=" + "x" * n) == f"password={F}"
    long_key = "a" * 5000 + "[password]"
    assert DEFAULT.redact_query(f"{long_key}=s3cr3t") == f"{long_key}={F}"
    assert DEFAULT.scrub_text(f"{long_key}=s3cr3t") == f"{long_key}={F}"


# --------------------------------------------------------------------------- records


def test_mask_filters_secret_keys_at_any_depth_and_scrubs_strings() -> None:
    state = {
        "user": {"password": "x", "profile": {"api_key": "k", "name": "al"}},
        "items": [{"secret": 1}, {"token": None}, "token=abc", ["password: y"]],
        "callback": "https://a.example/cb?code=c0de&x=1",
        "code": "FR",
        "n": 3,
        "ok": True,
    }
    assert DEFAULT.mask(state) == {
        "user": {"password": F, "profile": {"api_key": F, "name": "al"}},
        "items": [{"secret": F}, {"token": F}, f"token={F}", [f"password: {F}"]],
        "callback": f"https://a.example/cb?code={F}&x=1",
        "code": "FR",
        "n": 3,
        "ok": True,
    }
    plain = {"name": "ops", "tags": ["a", "b"], "n": {"x": 1}}
    assert DEFAULT.mask(plain) is plain
    assert DEFAULT.mask(None) is None


def test_mask_depth_is_bounded() -> None:
    deep: dict[str, object] = {"password": "x"}
    for _ in range(200):
        deep = {"a": deep}
    masked = DEFAULT.mask(deep)
    assert "x" not in json.dumps(masked).replace("\\", "")  # filtered, whatever the depth


def test_mask_diff_keeps_the_shape_of_a_changed_secret() -> None:
    changes = {
        "password": {"before": "a", "after": "b"},
        "pin": "changed",
        "notes": {"before": "token=a", "after": "x"},
        "statement": {"criteria": "users.password = 'x'", "values": {"api_token": "t"}},
        "name": {"before": "a", "after": "b"},
    }
    assert DEFAULT.mask_diff(changes) == {
        "password": {"before": F, "after": F},
        "pin": F,
        "notes": {"before": f"token={F}", "after": "x"},
        "statement": {"criteria": f"users.password = '{F}'", "values": {"api_token": F}},
        "name": {"before": "a", "after": "b"},
    }
    plain = {"name": {"before": "a", "after": "b"}}
    assert DEFAULT.mask_diff(plain) is plain


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "name", ["X-Passphrase", "X-OTP", "X-Session-Id", "x-my-token", "X-Amz-Credential"]
)
def test_secret_header_names_are_refused(name: str) -> None:
    with pytest.raises(LezaConfigError, match="never stored"):
        parse_record_headers("record_headers", [name])


def test_ordinary_header_names_are_accepted() -> None:
    names = ["referer", "origin", "accept-language", "x-tenant", "x-pinned-version"]
    assert parse_record_headers("record_headers", names) == tuple(names)


def test_leza_builds_one_redactor_from_both_settings() -> None:
    leza = Leza(
        storage="memory://",
        geoip_db=False,
        redact_query_keys=["e-mail"],
        audit_mask=["salary"],
    )
    try:
        r = leza.redactor
        for name in ("email", "salary"):
            assert r.is_secret(name)
            assert r.is_secret_field(name)
            assert leza.audit.masks(name)
        assert not leza.audit.masks("name")
    finally:
        leza.shutdown(2)
