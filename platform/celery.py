"""The Celery app. Tasks run on Redis when a broker URL is configured, in-process otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform.settings.production")

app = Celery("llm_platform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _beat_schedule_folder(sender: Celery, **_: Any) -> None:
    """Beat keeps its schedule under the var folder, which a fresh deployment does not have yet."""
    Path(sender.conf.beat_schedule_filename).parent.mkdir(parents=True, exist_ok=True)
