from django.urls import include, path

from . import views

urlpatterns = [
    path("things/<slug:name>/", views.thing),
    path("deep/", include([path("<uuid:key>/parts/<int:n>", views.thing)])),
]
