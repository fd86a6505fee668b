"""Django integration.

    # settings.py
    INSTALLED_APPS += ["leza_middleware.django"]          # system checks (leza.E001-E004)
    MIDDLEWARE = ["leza_middleware.django.LezaDjangoMiddleware", *MIDDLEWARE]
    LEZA = {"storage": "sqlite:///leza.db", "trusted_proxies": ["10.0.0.0/8"]}

``settings.LEZA`` takes the keyword arguments of :class:`~leza_middleware.Leza`
(``performer`` may also be a dotted path) and is read on the first request;
``LEZA_*`` environment variables fill what it leaves out. :func:`get_leza`
returns the process-wide instance for the read side (``get_leza().query.access()``,
``get_leza().sessions.revoke(session_id)``).

Model changes are audited per model, named in ``LEZA["audit_models"]`` or
decorated with :func:`audited` (``audit.py``): creates, updates, deletes,
many-to-many changes from either side and ``QuerySet.update()``, attributed to
``request.user``.

Sessions are Django's own (a keyed hash of the session key); ``login()``,
``logout()`` and failed ``authenticate()`` calls are recorded from Django's auth
signals (``signals.py``); see docs/django.md.

Importing this package loads no Django models and reads no settings, so it is
safe from settings modules and in any ``INSTALLED_APPS`` position.
"""

from .audit import audited
from .conf import get_leza
from .middleware import LezaDjangoMiddleware

__all__ = ["LezaDjangoMiddleware", "audited", "get_leza"]
