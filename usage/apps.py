from __future__ import annotations

from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from common.metrics import SHARED_STATE_COLLECTORS
        from usage.metrics import MeteringCollector

        SHARED_STATE_COLLECTORS.append(MeteringCollector())
