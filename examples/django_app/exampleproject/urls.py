from django.urls import path

from . import views

urlpatterns = [
    path("", views.home),
    path("items/<int:item_id>/", views.item),
    path("admin-only/", views.admin_only),
    path("boom/", views.boom),
    path("events/", views.events),
    path("login/", views.login),
    path("logout/", views.logout),
    path("sessions/", views.sessions),
    path("sessions/<str:session_id>/revoke/", views.revoke),
]
