"""Settings: keyword arguments, else ``LEZA_*`` environment variables, else defaults.

Every value is checked here, once, when ``Leza(...)`` is built, so a bad value is
a clear error at start-up naming the setting, never a surprise at request time.
Framework adapters (Django ``settings.LEZA``, Flask ``app.config["LEZA_*"]``)
feed the same keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .errors import LezaConfigError

if TYPE_CHECKING:
    from .storage.base import Storage

__all__ = ["DEFAULT_STORAGE", "Settings"]

DEFAULT_STORAGE = "sqlite:///leza.db"

# Query keys whose values never reach storage (compared case-insensitively,
# ignoring "-" and "_"). Users add their own with ``redact_query_keys``.
DEFAULT_REDACT_QUERY_KEYS = frozenset(
    {
        "password", "passwd", "pwd", "pass", "secret", "token", "accesstoken",
        "refreshtoken", "idtoken", "apikey", "key", "auth", "authorization",
        "sessionid", "session", "sid", "code", "signature", "sig", "jwt",
        "clientsecret", "privatekey", "otp", "csrftoken", "xsrftoken",
    }
)  # fmt: skip


def _positive_int(name: str, value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise LezaConfigError(f"{name} must be a whole number, got {value!r}") from None
    if n <= 0 or isinstance(value, bool):
        raise LezaConfigError(f"{name} must be a positive whole number, got {value!r}")
    return n


def _positive_float(name: str, value: Any) -> float:
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


@dataclass(frozen=True)
class Settings:
    storage: str | Storage = DEFAULT_STORAGE
    # None: the bundled default database when installed, else no geo (one warning).
    # False: geo disabled on purpose, no warning.
    geoip_db: str | os.PathLike[str] | bool | None = None
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
    redact_query_keys: frozenset[str] = field(default=DEFAULT_REDACT_QUERY_KEYS)
    request_id_header: str = "x-request-id"

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
        for name in known:
            value = overrides.get(name)
            if value is None and name != "performer":
                value = env.get("LEZA_" + name.upper())
            if value is not None:
                raw[name] = value
        return cls._validated(raw)

    @classmethod
    def _validated(cls, raw: dict[str, Any]) -> Settings:
        out: dict[str, Any] = {}
        for name in ("batch_size", "queue_size"):
            if name in raw:
                out[name] = _positive_int(name, raw[name])
        if "max_retries" in raw:
            n = raw["max_retries"]
            out["max_retries"] = 0 if n in (0, "0") else _positive_int("max_retries", n)
        for name in ("flush_interval", "shutdown_timeout"):
            if name in raw:
                out[name] = _positive_float(name, raw[name])
        if "trusted_proxies" in raw:
            out["trusted_proxies"] = _str_list("trusted_proxies", raw["trusted_proxies"])
        if "redact_query_keys" in raw:
            extra = _str_list("redact_query_keys", raw["redact_query_keys"])
            out["redact_query_keys"] = DEFAULT_REDACT_QUERY_KEYS | {
                k.lower().replace("-", "").replace("_", "") for k in extra
            }
        if "performer" in raw:
            if not callable(raw["performer"]):
                raise LezaConfigError(
                    f"performer must be a callable(request) -> Performer | dict | None, "
                    f"got {type(raw['performer']).__name__}"
                )
            out["performer"] = raw["performer"]
        if "geoip_db" in raw:
            g = raw["geoip_db"]
            if isinstance(g, str) and g.strip().lower() in {"", "off", "false", "none", "0"}:
                g = False
            if not isinstance(g, (str, os.PathLike, bool)):
                raise LezaConfigError(f"geoip_db must be a file path, None or False, got {g!r}")
            out["geoip_db"] = g
        if "secret_key" in raw:
            key = raw["secret_key"]
            if isinstance(key, bytes):
                key = key.decode("utf-8", "surrogateescape")
            if not isinstance(key, str) or len(key) < 16:
                raise LezaConfigError("secret_key must be a string of at least 16 characters")
            out["secret_key"] = key
        for name in ("app_name", "spill_dir", "request_id_header"):
            if name in raw:
                value = os.fspath(raw[name]) if name == "spill_dir" else raw[name]
                if not isinstance(value, str) or not value.strip():
                    raise LezaConfigError(f"{name} must be a non-empty string, got {raw[name]!r}")
                out[name] = value.strip().lower() if name == "request_id_header" else value.strip()
        if "storage" in raw:
            out["storage"] = raw["storage"]
        return cls(**out)
