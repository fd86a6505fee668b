"""``settings.LEZA``, read lazily: one process-wide :class:`~leza_middleware.Leza` per value.

Nothing here touches Django settings at import time, so importing
``leza_middleware.django`` is safe anywhere (settings modules, ``INSTALLED_APPS``
ordering). The first request (or the first :func:`get_leza` call) reads
``settings.LEZA`` and builds the ``Leza`` once; ``LEZA_*`` environment
variables still fill whatever the dict leaves out (``config.Settings.resolve``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import LezaConfigError

if TYPE_CHECKING:
    from ..leza import Leza

__all__ = ["built", "get_leza", "leza_options"]

log = logging.getLogger("leza_middleware")

# One Leza per settings.LEZA object (keyed by identity: a new dict, e.g. from
# override_settings in tests, gets its own). The dict is kept referenced so its
# id cannot be reused by another object.
_instances: dict[int, tuple[object, Leza]] = {}
_lock = threading.Lock()


def raw_setting() -> object:
    from django.conf import settings

    return getattr(settings, "LEZA", None)


def built() -> list[Leza]:
    """Every Leza :func:`get_leza` built in this process (to flush them at shutdown)."""
    return [leza for _, leza in list(_instances.values())]


def get_leza() -> Leza:
    """The process-wide :class:`~leza_middleware.Leza` configured by ``settings.LEZA``.

    Built on first use (thread-safe, once per ``settings.LEZA`` value) and shared
    by the middleware, your code and the read side::

        from leza_middleware.django import get_leza
        get_leza().query.access(limit=20)

    Raises :class:`~leza_middleware.LezaConfigError` when the settings are invalid
    (``manage.py check`` reports the same problems as ``leza.E00x`` errors).
    """
    raw = raw_setting()
    entry = _instances.get(id(raw))
    if entry is not None and entry[0] is raw:
        return entry[1]
    with _lock:
        entry = _instances.get(id(raw))
        if entry is not None and entry[0] is raw:
            return entry[1]
        from ..leza import Leza

        leza = Leza(**leza_options(raw))
        _instances[id(raw)] = (raw, leza)
        _warn_unconnected_audit(raw)
        return leza


def _warn_unconnected_audit(raw: object) -> None:
    """``audit_models`` is connected by ``LezaConfig.ready()``: say so when it cannot be."""
    if not isinstance(raw, Mapping) or not raw.get("audit_models"):
        return
    from django.apps import apps

    try:
        installed = apps.is_installed("leza_middleware.django")
    except Exception:  # the app registry is not ready yet: LezaConfig.ready() will tell
        return
    if not installed:
        log.warning(
            "leza: settings.LEZA['audit_models'] is set but 'leza_middleware.django' is not "
            "in INSTALLED_APPS, so no model change is audited"
        )


def leza_options(raw: object = None) -> dict[str, Any]:
    """``settings.LEZA`` as ``Leza(...)`` keyword arguments.

    * ``audit_models`` (:data:`DJANGO_ONLY`) is left out: ``audit.py`` reads it.

    * ``performer``, ``revoked_response`` and ``has_permission`` may be dotted
      paths (``"myapp.identity.performer"``); they are imported.
    * ``secret_key``, when neither ``LEZA["secret_key"]`` nor ``$LEZA_SECRET_KEY`` is
      set, is derived from Django's ``SECRET_KEY`` (an HMAC, never the key itself),
      so every worker of the site shares it without another secret to manage.
    """
    options = {k: v for k, v in as_mapping(raw).items() if k not in DJANGO_ONLY}
    for name in HOOKS:
        if isinstance(options.get(name), str):
            options[name] = import_hook(name, options[name])
    if options.get("secret_key") is None and os.environ.get("LEZA_SECRET_KEY") is None:
        derived = derived_secret_key()
        if derived is not None:
            options["secret_key"] = derived
    return options


def as_mapping(raw: object) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise LezaConfigError(
            f"settings.LEZA must be a dict of Leza(...) keyword arguments, got {type(raw).__name__}"
        )
    bad = [key for key in raw if not isinstance(key, str)]
    if bad:
        raise LezaConfigError(f"settings.LEZA keys must be strings, got {bad[0]!r}")
    return raw


#: ``settings.LEZA`` keys the Django integration reads itself (not ``Leza(...)`` arguments):
#: ``audit_models`` (audit.py) and ``dashboard_authorize`` (views.py).
DJANGO_ONLY = frozenset({"audit_models", "dashboard_authorize"})

#: Settings that take a callable, or its dotted path; what the callable looks like.
HOOKS = {
    "performer": "callable(request) -> Performer | dict | None",
    "revoked_response": "callable(request) -> (status, headers, body)",
    "has_permission": "callable(performer, request, permission) -> bool",
    "dashboard_authorize": "callable(request) -> bool",
}


def import_hook(name: str, path: str) -> Callable[..., Any]:
    """Import the hook setting ``name`` (one of :data:`HOOKS`) named by a dotted path."""
    from django.utils.module_loading import import_string

    try:
        hook = import_string(path)
    except ImportError as exc:
        raise LezaConfigError(f"{name} {path!r} cannot be imported: {exc}") from None
    if not callable(hook):
        raise LezaConfigError(f"{name} {path!r} is a {type(hook).__name__}, not a {HOOKS[name]}")
    return hook  # type: ignore[no-any-return]


def derived_secret_key() -> str | None:
    """A Leza key derived from ``settings.SECRET_KEY`` (None when that is unset)."""
    from django.conf import settings

    try:
        secret = settings.SECRET_KEY
    except Exception:  # unset or empty: Django raises ImproperlyConfigured
        return None
    if not secret:
        return None
    key = secret.encode("utf-8", "surrogateescape") if isinstance(secret, str) else bytes(secret)
    return hmac.new(key, b"leza_middleware.django.secret_key", hashlib.sha256).hexdigest()
