"""The admin view: STATE · AUDIT · ACCESS · ADVISORY · SESSION · LOG, and its JSON API.

One renderer (:mod:`.core`) behind three mounts::

    from leza_middleware.dashboard import make_asgi_app, make_wsgi_app

    app.mount("/leza", make_asgi_app(leza, authorize=is_admin))        # Starlette / FastAPI
    flask_app.wsgi_app = DispatcherMiddleware(                          # Flask, any WSGI
        flask_app.wsgi_app, {"/leza": make_wsgi_app(leza, authorize=is_admin)})
    path("leza/", include("leza_middleware.django.urls"))              # Django (staff only)

Every request is refused (403) unless ``authorize(request)`` says yes; every
view is recorded as an access event; the only writes are revoking a session
and revoking every session of a performer. Each request id, session,
performer and entity links to its traceability view (:mod:`.links`,
:mod:`.trace_routes`). See docs/dashboard.md.
"""

from .asgi import DashboardASGI, make_asgi_app
from .core import Dashboard
from .wsgi import DashboardWSGI, make_wsgi_app

__all__ = ["Dashboard", "DashboardASGI", "DashboardWSGI", "make_asgi_app", "make_wsgi_app"]
