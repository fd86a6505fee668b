"""Settings: keyword arguments, else ``LEZA_*`` environment variables, else defaults.

Every value is checked here, once, when ``Leza(...)`` is built, so a bad value is
a clear error at start-up naming the setting, never a surprise at request time.
Framework adapters (Django ``settings.LEZA``, Flask ``app.config["LEZA_*"]``)
feed the same keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from .errors import LezaConfigError

if TYPE_CHECKING:
    from .storage.base import Storage

__all__ = ["DEFAULT_STORAGE", "REVOCATION_UNKNOWN", "Settings"]

DEFAULT_STORAGE = "sqlite:///leza.db"


def _whole(name: str, given: Any, minimum: int) -> int:
    value = given
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise LezaConfigError(f"{name} must be a whole number, got {given!r}")
    if value < minimum:
        what = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
        raise LezaConfigError(f"{name} must be {what}, got {given!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise LezaConfigError(f"{name} must be a number of seconds, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise LezaConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not x > 0 or x == float("inf"):
        raise LezaConfigError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return x


def _str_list(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, Iterable):
        items = tuple(value)
        for item in items:
            if not isinstance(item, str):
                raise LezaConfigError(f"{name} must hold strings, got {item!r}")
        return tuple(i.strip() for i in items if i.strip())
    raise LezaConfigError(f"{name} must be a list of strings or a comma-separated string")


def _secret_names(name: str, value: Any) -> tuple[str, ...]:
    """Names added to the secret list: each must keep a letter or a digit once
    normalised (``"-"`` would match nothing, silently)."""
    from .redact import normalise_name

    names = _str_list(name, value)
    for item in names:
        if not normalise_name(item):
            raise LezaConfigError(f"{name}: {item!r} is not a name (it needs a letter or a digit)")
    return names


@dataclass(frozen=True)
class Settings:
    # A URL, a Storage, or {kind: URL or Storage, "default": ...} (storage/routed.py).
    storage: str | Storage | Mapping[str, str | Storage] = DEFAULT_STORAGE
    # None: the bundled default database when installed, else no geo (one warning).
    # False: geo disabled on purpose, no warning.
    geoip_db: str | os.PathLike[str] | Literal[False] | None = None
    trusted_proxies: tuple[str, ...] = ()
    performer: Callable[[Any], Any] | None = None
    secret_key: str | None = None
    app_name: str = "app"
    batch_size: int = 512
    flush_interval: float = 1.0
    queue_size: int = 10_000
    spill_dir: str | None = None
    shutdown_timeout: float = 5.0
    max_retries: int = 3
    # Names whose values are secrets, added to leza_middleware.redact's list (normalised); used
    # everywhere: query strings, URLs, log text, recorded headers, audit states.
    redact_query_keys: frozenset[str] = frozenset()
    request_id_header: str = "x-request-id"
    # Machine identity and sessions (sessions/).
    machine_cookie: str | None = "leza_mid"  # False / "" / "off": no machine cookie
    machine_cookie_max_age: int = 2 * 365 * 86400
    session_cookie: str = "leza_sid"
    sessions: bool = True
    idle_timeout: float = 30 * 60.0
    absolute_timeout: float = 12 * 3600.0
    session_seen_interval: float = 60.0
    session_poll_interval: float = 2.0
    revocation_memory: float = 30 * 86400.0  # how long revoked/logged-out ids stay refused
    # The blocklist is loaded before a process decides its first request that
    # carries a session cookie (sessions/registry.py, docs/sessions.md): within
    # ``revocation_load_timeout`` seconds; it is trusted for
    # ``revocation_max_staleness`` seconds after its last refresh. When it cannot
    # be known, "refuse" answers such requests as revoked ones, "allow" serves them.
    revocation_unknown: str = "refuse"
    revocation_load_timeout: float = 5.0
    # None: 60 s, or twice session_poll_interval when that is longer (max_staleness()).
    revocation_max_staleness: float | None = None
    enforce_session_timeouts: bool = False
    logout_routes: tuple[str, ...] = ()
    revoked_response: Callable[[Any], tuple[int, list[tuple[str, str]], bytes]] | None = None
    # More secret names, as given; added to the same list as redact_query_keys.
    audit_mask: tuple[str, ...] = ()
    # Endpoint permissions (permissions.py): {permission: ["GET /path/*", ...]}.
    permissions: tuple[Any, ...] = ()  # compiled rules
    has_permission: Callable[[Any, Any, str], bool] | None = None
    # Advisories (advisories/): on by default with the built-in rules; ``advisory_rules``
    # replaces them; findings at or above ``advisory_notify`` go to the notifiers.
    advisories: bool = True
    advisory_rules: tuple[Any, ...] | None = None
    advisory_notify: str | None = "high"
    # Privacy (privacy/, docs/privacy.md): headers stored with access events
    # (never a credential-bearing one), IP anonymisation per kind as (kind, mode)
    # pairs, retention per kind as (kind, seconds) pairs, purged every interval.
    record_headers: tuple[str, ...] = ()
    anonymize_ip: tuple[tuple[str, str], ...] = ()
    retention: tuple[tuple[str, int], ...] = ()
    retention_interval: float = 3600.0
    # Schema migrations (storage/migrate.py): apply pending ones at the first storage
    # setup. Off: an older schema is left alone with a warning naming `leza migrate`.
    migrate: bool = False
    # gc.freeze() twice after start-up, on the recorder thread (gcfreeze.py).
    gc_freeze: bool = True

    def max_staleness(self) -> float:
        """How long a refreshed blocklist is trusted (``revocation_max_staleness``)."""
        if self.revocation_max_staleness is not None:
            return self.revocation_max_staleness
        return max(60.0, 2 * self.session_poll_interval)

    @classmethod
    def resolve(
        cls, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Merge explicit values (not None) over ``LEZA_<NAME>`` variables over defaults."""
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise LezaConfigError(
                f"unknown setting(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        raw: dict[str, Any] = {}
        # How each value is named in error messages: the environment variable
        # too when it came from there, so the user knows where to look.
        label: dict[str, str] = {}
        for name in known:
            value = overrides.get(name)
            label[name] = name
            if value is None and name not in _NOT_FROM_ENV:
                var = "LEZA_" + name.upper()
                value = env.get(var)
                label[name] = f"{name} (from ${var})"
            if value is not None:
                raw[name] = value
        if overrides.get("storage") is None:
            per_kind = storage_by_kind(env)
            if per_kind:
                # LEZA_STORAGE_<KIND> splits the stream; $LEZA_STORAGE (or the
                # default) keeps every kind not named.
                per_kind.setdefault("default", raw.get("storage", DEFAULT_STORAGE))
                raw["storage"] = per_kind
                label["storage"] = "storage (from $LEZA_STORAGE_<KIND>)"
        return cls._validated(raw, label)

    @classmethod
    def _validated(cls, raw: dict[str, Any], label: Mapping[str, str]) -> Settings:
        out: dict[str, Any] = {}
        for name in ("batch_size", "queue_size"):
            if name in raw:
                out[name] = _whole(label[name], raw[name], 1)
        if "max_retries" in raw:
            out["max_retries"] = _whole(label["max_retries"], raw["max_retries"], 0)
        for name in ("flush_interval", "shutdown_timeout"):
            if name in raw:
                out[name] = _positive_float(label[name], raw[name])
        if "trusted_proxies" in raw:
            out["trusted_proxies"] = _str_list(label["trusted_proxies"], raw["trusted_proxies"])
        if "redact_query_keys" in raw:
            from .redact import normalise_name

            extra = _secret_names(label["redact_query_keys"], raw["redact_query_keys"])
            out["redact_query_keys"] = frozenset(map(normalise_name, extra))
        if "performer" in raw:
            if not callable(raw["performer"]):
                raise LezaConfigError(
                    f"performer must be a callable(request) -> Performer | dict | None, "
                    f"got {type(raw['performer']).__name__}"
                )
            out["performer"] = raw["performer"]
        if "geoip_db" in raw:
            g = raw["geoip_db"]
            if isinstance(g, str):
                word = g.strip().lower()
                if word in {"", "off", "false", "none", "0", "no"}:
                    g = False
                elif word in {"on", "true", "1", "yes"}:
                    raise LezaConfigError(
                        f"{label['geoip_db']} is {g!r}: give the path of a .mmdb file, or "
                        "'off' to disable geolocation (leave it unset for the default database)"
                    )
            if g is True:
                raise LezaConfigError(
                    f"{label['geoip_db']}=True is ambiguous: pass a file path, None (the "
                    "default database) or False (no geolocation)"
                )
            if not isinstance(g, (str, os.PathLike, bool)):
                raise LezaConfigError(
                    f"{label['geoip_db']} must be a file path, None or False, got {g!r}"
                )
            out["geoip_db"] = g
        if "secret_key" in raw:
            key = raw["secret_key"]
            if isinstance(key, bytes):
                key = key.decode("utf-8", "surrogateescape")
            if not isinstance(key, str) or len(key) < 16:
                raise LezaConfigError(
                    f"{label['secret_key']} must be a string of at least 16 characters"
                )
            out["secret_key"] = key
        for name in ("app_name", "spill_dir", "request_id_header"):
            if name in raw:
                value = os.fspath(raw[name]) if name == "spill_dir" else raw[name]
                if not isinstance(value, str) or not value.strip():
                    raise LezaConfigError(
                        f"{label[name]} must be a non-empty string, got {raw[name]!r}"
                    )
                out[name] = value.strip().lower() if name == "request_id_header" else value.strip()
        if "machine_cookie" in raw:
            value = raw["machine_cookie"]
            if value is False or (
                isinstance(value, str) and value.strip().lower() in {"", "off", "false", "0", "no"}
            ):
                out["machine_cookie"] = None
            elif isinstance(value, str) and _COOKIE_NAME.fullmatch(value.strip()):
                out["machine_cookie"] = value.strip()
            else:
                raise LezaConfigError(
                    f"{label['machine_cookie']} must be a cookie name or False, got {value!r}"
                )
        if "session_cookie" in raw:
            value = raw["session_cookie"]
            if not isinstance(value, str) or not _COOKIE_NAME.fullmatch(value.strip()):
                raise LezaConfigError(
                    f"{label['session_cookie']} must be a cookie name, got {value!r}"
                )
            out["session_cookie"] = value.strip()
        if "machine_cookie_max_age" in raw:
            out["machine_cookie_max_age"] = _whole(
                label["machine_cookie_max_age"], raw["machine_cookie_max_age"], 1
            )
        for name in ("idle_timeout", "absolute_timeout", "session_seen_interval",
                     "session_poll_interval", "revocation_memory", "revocation_load_timeout",
                     "revocation_max_staleness"):  # fmt: skip
            if name in raw:
                out[name] = _positive_float(label[name], raw[name])
        if "revocation_unknown" in raw:
            out["revocation_unknown"] = _choice(
                label["revocation_unknown"], raw["revocation_unknown"], REVOCATION_UNKNOWN
            )
        _check_staleness(out, label)
        for name in ("sessions", "enforce_session_timeouts", "migrate", "gc_freeze"):
            if name in raw:
                out[name] = _flag(label[name], raw[name])
        if "logout_routes" in raw:
            routes = _str_list(label["logout_routes"], raw["logout_routes"])
            for route in routes:
                method, _, path = route.rpartition(" ")
                if not path.startswith("/") or (method and not method.isalpha()):
                    raise LezaConfigError(
                        f"{label['logout_routes']} entry {route!r} must look like "
                        "'/logout' or 'POST /logout'"
                    )
            out["logout_routes"] = routes
        if "audit_mask" in raw:
            out["audit_mask"] = _secret_names(label["audit_mask"], raw["audit_mask"])
        if "permissions" in raw:
            from .permissions import parse_rules

            out["permissions"] = parse_rules(raw["permissions"])
        if "has_permission" in raw:
            if not callable(raw["has_permission"]):
                raise LezaConfigError(
                    "has_permission must be a callable(performer, request, permission) -> bool"
                )
            out["has_permission"] = raw["has_permission"]
        if "revoked_response" in raw:
            if not callable(raw["revoked_response"]):
                raise LezaConfigError(
                    "revoked_response must be a callable(request) -> (status, headers, body)"
                )
            out["revoked_response"] = raw["revoked_response"]
        if "advisories" in raw:
            out["advisories"] = _flag(label["advisories"], raw["advisories"])
        if "advisory_rules" in raw:
            from .advisories import Rule

            rules = raw["advisory_rules"]
            if isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
                raise LezaConfigError("advisory_rules must be a list of advisory Rule objects")
            rules = tuple(rules)
            bad = [r for r in rules if not isinstance(r, Rule)]
            if bad:
                raise LezaConfigError(
                    f"advisory_rules must hold advisory Rule objects, got {type(bad[0]).__name__}"
                )
            out["advisory_rules"] = rules
        if "advisory_notify" in raw:
            out["advisory_notify"] = _severity(label["advisory_notify"], raw["advisory_notify"])
        if {"record_headers", "anonymize_ip", "retention", "retention_interval"} & raw.keys():
            from . import privacy

            if "record_headers" in raw:
                out["record_headers"] = privacy.parse_record_headers(
                    label["record_headers"], raw["record_headers"]
                )
            if "anonymize_ip" in raw:
                out["anonymize_ip"] = privacy.parse_anonymize_ip(
                    label["anonymize_ip"], raw["anonymize_ip"]
                )
            if "retention" in raw:
                out["retention"] = privacy.parse_retention(label["retention"], raw["retention"])
            if "retention_interval" in raw:
                out["retention_interval"] = privacy.parse_duration(
                    label["retention_interval"], raw["retention_interval"]
                )
        if "spill_dir" in out:
            _check_spill_dir(label["spill_dir"], out["spill_dir"])
        if "storage" in raw:
            out["storage"] = _storage(raw["storage"])
        return cls(**out)


def storage_by_kind(source: Mapping[str, Any]) -> dict[str, Any]:
    """``{kind: URL}`` from ``LEZA_STORAGE_ACCESS``, ``LEZA_STORAGE_LOG``, … in
    ``source`` (the environment, a Flask config), those set and not empty."""
    from .storage.routed import KINDS

    out: dict[str, Any] = {}
    for kind in KINDS:
        value = source.get(f"LEZA_STORAGE_{kind.upper()}")
        if value is not None and (not isinstance(value, str) or value.strip()):
            out[kind] = value
    return out


def _storage(value: Any) -> Any:
    """A URL or Storage as given (opened and checked by ``storage.open_storage``);
    a mapping is copied (a later change to the caller's dict changes nothing)."""
    if isinstance(value, Mapping):
        return dict(value)
    return value


# Settings that are code, not text: no LEZA_* variable.
_NOT_FROM_ENV = frozenset(
    {"performer", "revoked_response", "permissions", "has_permission", "advisory_rules"}
)
_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,64}")


#: What ``revocation_unknown`` may say: refuse (the default) or allow requests
#: carrying a session cookie while the blocklist cannot be known.
REVOCATION_UNKNOWN = ("refuse", "allow")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise LezaConfigError(
        f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
    )


def _check_staleness(out: Mapping[str, Any], label: Mapping[str, str]) -> None:
    """The blocklist must be allowed to age past one poll, or every poll that
    comes a little late would make a request wait for a load (or be refused)."""
    staleness = out.get("revocation_max_staleness")
    poll = out.get("session_poll_interval", Settings.session_poll_interval)
    if staleness is not None and staleness <= poll:
        name = label["revocation_max_staleness"]
        raise LezaConfigError(
            f"{name} ({staleness:g} s) must be longer than session_poll_interval "
            f"({poll:g} s): the blocklist is refreshed once per poll"
        )


def _severity(name: str, value: Any) -> str | None:
    """An advisory severity, or None (``off``) for never."""
    from .events import SEVERITIES

    if value is False or (isinstance(value, str) and value.strip().lower() in {"off", "none", ""}):
        return None
    if isinstance(value, str) and value.strip().lower() in SEVERITIES:
        return value.strip().lower()
    raise LezaConfigError(f"{name} must be one of {', '.join(SEVERITIES)} or 'off', got {value!r}")


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in {"1", "true", "yes", "on"}:
            return True
        if word in {"0", "false", "no", "off"}:
            return False
    raise LezaConfigError(f"{name} must be true or false, got {value!r}")


def _check_spill_dir(name: str, path: str) -> None:
    """The spill directory must be creatable; it is only created when needed."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise LezaConfigError(f"{name} {path!r}: {probe!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LezaConfigError(f"{name} {path!r}: {probe!r} is not writable")
