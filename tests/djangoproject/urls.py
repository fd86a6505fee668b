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
    path("bad-request-id/", views.bad_request_id),
    path("request-id/", views.request_id),
    path("api/v1/", include("djangoproject.api_urls")),
    path("login/", views.login_view),
    path("logout/", views.logout_view),
    path("signout/", views.signout),
    path("login-norequest/", views.login_without_request),
    path("signout-others/", views.signout_others),
    path("alogin/", views.async_login),
    path("alogout/", views.async_logout),
    path("ame/", views.async_me),
    path("reports/<int:n>/", views.report),
    path("areports/<int:n>/", views.async_report),
    re_path(r"^archive/(?P<year>[0-9]{4})/$", views.archive),
    path("roles/<int:pk>/permissions/", views.role_permissions),
    path("roles/<int:pk>/apermissions/", views.arole_permissions),
    path("roles/<int:pk>/rename/", views.role_rename),
    path("roles/<int:pk>/delete/", views.role_delete),
    path("permissions/<str:codename>/grant/", views.permission_grant),
    path("membership/", views.membership),
    path("users/deactivate/", views.deactivate),
    path("users/sign-up/", views.sign_up),
    path("leza/", include("leza_middleware.django.urls")),  # the dashboard (staff only)
]
