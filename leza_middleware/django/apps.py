"""``INSTALLED_APPS += ["leza_middleware.django"]``: system checks, auth signals, model audit."""

from __future__ import annotations

from django.apps import AppConfig


class LezaConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "leza_middleware.django"
    label = "leza"
    verbose_name = "Leza audit and traceability"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from . import checks  # registers the checks
        from .audit import connect_audit, on_setting_changed
        from .signals import connect_signals

        checks.register_checks()
        connect_signals()  # login / logout / login_failed as ACCESS actions
        connect_audit()  # LEZA["audit_models"] and @audited models
        setting_changed.connect(on_setting_changed, dispatch_uid="leza_middleware.django.audit")
