"""``path("leza/", include("leza_middleware.django.urls"))``: the dashboard and its JSON API.

Every route under the prefix goes to one view (``views.dashboard``), which
routes like the ASGI and WSGI mounts do: ``<tab>``, ``api/<tab>``,
``sessions/revoke``. The pattern takes any path under the prefix, newlines
included (``.`` would not), so an unknown page is the dashboard's own 404,
with its security headers, rather than Django's.
"""

from django.urls import re_path

from . import views

app_name = "leza_dashboard"

urlpatterns = [
    re_path(r"^(?P<subpath>[\s\S]*)$", views.dashboard, name="dashboard"),
]
