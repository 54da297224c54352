from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_default_plan_create, sender=self)


def _default_plan_create(sender: AppConfig, **kwargs: Any) -> None:
    """With DEFAULT_PLAN_AUTO_CREATE (development), `migrate` creates the DEFAULT_PLAN that
    sign-up puts new organizations on, free, when it is missing."""
    from django.conf import settings

    from billing.services import default_plan_ensure

    if settings.DEFAULT_PLAN_AUTO_CREATE and settings.DEFAULT_PLAN:
        default_plan_ensure(slug=settings.DEFAULT_PLAN)
