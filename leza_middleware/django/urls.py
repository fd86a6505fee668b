"""``path("leza/", include("leza_middleware.django.urls"))``: the dashboard and its JSON API.

Every route under the prefix goes to one view (``views.dashboard``), which
routes like the ASGI and WSGI mounts do: ``<tab>``, ``api/<tab>``,
``sessions/revoke``.
"""

from django.urls import re_path

from . import views

app_name = "leza_dashboard"

urlpatterns = [
    re_path(r"^(?P<subpath>.*)$", views.dashboard, name="dashboard"),
]
