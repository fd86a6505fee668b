"""System checks: ``manage.py check`` validates ``settings.LEZA`` without connecting anywhere.

Each problem is reported with the library's own message (the one ``Leza(...)``
would raise), through the same validators the ``Leza`` constructor uses:

* ``leza.E001`` storage (``storage.open_storage``: URL, driver, SQLite directory);
* ``leza.E002`` GeoIP database (``GeoResolver.open``: missing, unreadable, corrupt);
* ``leza.E003`` trusted proxies (``ProxyTrust``: ``*``, ``0.0.0.0/0``, bad entries);
* ``leza.E004`` anything else (``settings.LEZA`` itself, unknown keys, numbers,
  the performer, revoked_response and dashboard_authorize hooks, ``LEZA_*``
  environment variables);
* ``leza.E005`` ``audit_models``: its shape, models that do not exist, excluded
  names that are no field of the model;
* ``leza.W001`` the app is installed but the middleware is not in ``MIDDLEWARE``.

Every setting is checked on its own, so one run lists every bad value.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

from django.core import checks

from ..config import Settings
from ..errors import LezaConfigError
from .conf import DJANGO_ONLY, HOOKS, as_mapping, import_hook, raw_setting

__all__ = ["check_audit_models", "check_middleware", "check_settings", "register_checks"]

STORAGE = "leza.E001"
GEOIP = "leza.E002"
PROXIES = "leza.E003"
OTHER = "leza.E004"
AUDIT_MODELS = "leza.E005"
NO_MIDDLEWARE = "leza.W001"

_IDS = {"storage": STORAGE, "geoip_db": GEOIP, "trusted_proxies": PROXIES}
# Settings validated against others (config.py: the staleness bound must exceed the poll).
_CHECKED_WITH = {"revocation_max_staleness": ("session_poll_interval",)}
_HINTS = {
    STORAGE: (
        "Set settings.LEZA['storage'] (or $LEZA_STORAGE) to a storage URL such as "
        "'sqlite:///leza.db' or 'postgresql+psycopg://USER:PASSWORD@HOST:5432/NAME'."
    ),
    GEOIP: (
        "Set settings.LEZA['geoip_db'] (or $LEZA_GEOIP_DB) to a readable City or Country "
        ".mmdb file, None for the default database, or False to turn geolocation off."
    ),
    PROXIES: (
        "List the IPs or CIDR networks of your own reverse proxies in "
        "settings.LEZA['trusted_proxies'] (or $LEZA_TRUSTED_PROXIES)."
    ),
    OTHER: (
        "settings.LEZA and the LEZA_* environment variables take the keyword arguments "
        "of leza_middleware.Leza(...); see docs/configuration.md."
    ),
    AUDIT_MODELS: (
        "settings.LEZA['audit_models'] lists model labels ('auth.Group') or maps them to "
        "{'exclude': [field names]}; see docs/django.md."
    ),
}
MIDDLEWARE_PATHS = (
    "leza_middleware.django.LezaDjangoMiddleware",
    "leza_middleware.django.middleware.LezaDjangoMiddleware",
)


def _error(exc: LezaConfigError, check_id: str) -> Any:
    return checks.Error(str(exc), hint=_HINTS[check_id], obj="settings.LEZA", id=check_id)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Validate ``settings.LEZA`` and the ``LEZA_*`` environment like ``Leza(...)`` would."""
    try:
        options = {k: v for k, v in as_mapping(raw_setting()).items() if k not in DJANGO_ONLY}
    except LezaConfigError as exc:
        return [_error(exc, OTHER)]
    errors: list[Any] = []
    bad: set[str] = set()

    errors.extend(_check_dashboard_authorize())
    for name in HOOKS:  # dotted paths: importable, and callable
        if isinstance(options.get(name), str):
            try:
                options[name] = import_hook(name, options[name])
            except LezaConfigError as exc:
                errors.append(_error(exc, OTHER))
                bad.add(name)

    known = {f.name for f in fields(Settings)}
    unknown = set(options) - known
    if unknown:
        try:
            Settings.resolve({name: options[name] for name in unknown}, environ={})
        except LezaConfigError as exc:
            errors.append(_error(exc, OTHER))

    # One setting at a time (its environment variable included), so every bad
    # value is reported and each under the right id.
    env = os.environ
    # A setting bounded by another is checked with it, after it (when it is good).
    for name in sorted(known - bad, key=lambda n: (n in _CHECKED_WITH, n)):
        given = {name: options.get(name)}
        for other in _CHECKED_WITH.get(name, ()):
            if other not in bad:
                given[other] = options.get(other)
        own_env = {var: env[var] for var in ("LEZA_" + n.upper() for n in given) if var in env}
        try:
            Settings.resolve(given, own_env)
        except LezaConfigError as exc:
            errors.append(_error(exc, _IDS.get(name, OTHER)))
            bad.add(name)

    good = {k: v for k, v in options.items() if k in known and k not in bad}
    good_env = {
        var: value
        for var, value in env.items()
        if var.startswith("LEZA_") and var[5:].lower() in known - bad
    }
    try:
        settings = Settings.resolve(good, good_env)
    except LezaConfigError as exc:  # not expected: each value passed on its own
        return [*errors, _error(exc, OTHER)]

    if "storage" not in bad:
        errors.extend(_check_storage(settings))
    if "geoip_db" not in bad:
        errors.extend(_check_geoip(settings))
    if "trusted_proxies" not in bad:
        errors.extend(_check_proxies(settings))
    return errors


def _check_dashboard_authorize() -> list[Any]:
    """``LEZA["dashboard_authorize"]``: a callable, or the dotted path of one."""
    hook = as_mapping(raw_setting()).get("dashboard_authorize")
    try:
        if isinstance(hook, str):
            import_hook("dashboard_authorize", hook)
        elif hook is not None and not callable(hook):
            raise LezaConfigError(
                f"dashboard_authorize must be a {HOOKS['dashboard_authorize']} or its dotted "
                f"path, got {type(hook).__name__}"
            )
    except LezaConfigError as exc:
        return [_error(exc, OTHER)]
    return []


def _check_storage(settings: Settings) -> list[Any]:
    from ..storage import open_storage

    try:
        storage = open_storage(settings.storage)  # checks URL, driver, path; no connection
    except LezaConfigError as exc:
        return [_error(exc, STORAGE)]
    if storage is not settings.storage:  # ours to release (an engine, no connection yet)
        storage.close()
    return []


def _check_geoip(settings: Settings) -> list[Any]:
    path = settings.geoip_db
    if path is None or path is False:  # the optional default database, or off
        return []
    from ..enrich.geo import GeoResolver

    try:
        GeoResolver.open(path).close()
    except LezaConfigError as exc:
        return [_error(exc, GEOIP)]
    return []


def _check_proxies(settings: Settings) -> list[Any]:
    from ..enrich.clientip import ProxyTrust

    try:
        ProxyTrust(settings.trusted_proxies)
    except LezaConfigError as exc:
        return [_error(exc, PROXIES)]
    return []


def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Warn when the app is installed but nothing records requests."""
    from django.conf import settings

    middleware = getattr(settings, "MIDDLEWARE", None) or ()
    if any(path in MIDDLEWARE_PATHS for path in middleware):
        return []
    return [
        checks.Warning(
            "LezaDjangoMiddleware is not in MIDDLEWARE: no request is recorded.",
            hint=(
                "Add 'leza_middleware.django.LezaDjangoMiddleware' to MIDDLEWARE, preferably first."
            ),
            obj="settings.MIDDLEWARE",
            id=NO_MIDDLEWARE,
        )
    ]


def check_audit_models(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``LEZA["audit_models"]``: labels of installed models, excluded names of their fields."""
    from django.apps import apps

    from .audit import parse_audit_models

    try:
        raw = as_mapping(raw_setting())
    except LezaConfigError:
        return []  # check_settings reports it (leza.E004)
    try:
        specs = parse_audit_models(raw.get("audit_models"))
    except LezaConfigError as exc:
        return [_error(exc, AUDIT_MODELS)]
    models = {m._meta.label_lower: m for m in apps.get_models()}
    errors: list[Any] = []
    for label, excluded in specs.items():
        model = models.get(label)
        if model is None:
            errors.append(
                _error(LezaConfigError(f"audit_models: no installed model {label!r}"), AUDIT_MODELS)
            )
            continue
        known = _field_names(model)
        for name in sorted(excluded - known):
            message = f"audit_models[{label!r}]: {model._meta.label} has no field {name!r}"
            errors.append(_error(LezaConfigError(message), AUDIT_MODELS))
    return errors


def _field_names(model: Any) -> set[str]:
    """What ``exclude`` may name: fields, their columns' attnames, many-to-many sides."""
    from .audit import relations, side_key

    names: set[str] = set()
    for f in model._meta.concrete_fields:
        names.update((f.name, f.attname))
    for field, declaring in relations(model._meta.concrete_model):
        key = side_key(field, declaring)
        if key is not None:
            names.add(key)
    return names


def register_checks() -> None:
    """Register the checks (``LezaConfig.ready()`` does; idempotent)."""
    checks.register(check_settings)
    checks.register(check_middleware)
    checks.register(check_audit_models)
