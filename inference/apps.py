from __future__ import annotations

import functools
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class InferenceConfig(AppConfig):
    name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        checks.register(registry_file_check)
        # The engine's finished spans go straight to the SDK's processor when tracing is on.
        from common.spans import span_finished
        from inference.engine import spans

        spans.recorder_install(functools.partial(span_finished, scope="inference.engine"))


def registry_file_check(**kwargs: Any) -> list[checks.CheckMessage]:
    """A registry file with a mistake fails `manage.py check` (and the deploy that runs it),
    not the first request."""
    if not settings.LLM_MODELS_FILE:
        return []
    from inference.engine.registry import RegistryConfigError, registry_config_load

    try:
        registry_config_load(settings.LLM_MODELS_FILE, root=settings.BASE_DIR)
    except RegistryConfigError as exc:
        return [checks.Error(f"LLM_MODELS_FILE: {exc}", id="inference.E001")]
    return []
