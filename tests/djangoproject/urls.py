from django.urls import include, path, re_path

from . import views

urlpatterns = [
    path("", views.home),
    path("items/<int:item_id>/", views.item),
    path("me/", views.me),
    path("forbidden/", views.forbidden),
    path("boom/", views.boom),
    path("stream/", views.stream),
    path("astream/", views.astream),
    path("file/", views.file),
    path("async/", views.async_view),
    path("own-request-id/", views.own_request_id),
    path("request-id/", views.request_id),
    path("api/v1/", include("djangoproject.api_urls")),
    re_path(r"^archive/(?P<year>[0-9]{4})/$", views.archive),
]
