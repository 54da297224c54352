from __future__ import annotations

from django.apps import AppConfig


class CommonConfig(AppConfig):
    name = "common"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Makes the project's Celery app the current one in every process that runs Django,
        # so tasks sent from web workers use its broker settings.
        import platform.celery  # noqa: F401
        from common.tracing import tracing_configure

        tracing_configure()
