"""The Celery app. Tasks run on Redis when a broker URL is configured, in-process otherwise.

Metrics of a worker: with `CELERY_METRICS_PORT` set (the Procfile sets 9808), the worker's main
process serves Prometheus's text format on `CELERY_METRICS_ADDRESS` (default 127.0.0.1) at that
port, adding up its pool processes' files under `PROMETHEUS_MULTIPROC_DIR`, which must be set
in the worker's environment before it starts (prometheus_client picks its storage on import)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform.settings.production")

app = Celery("llm_platform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _beat_schedule_folder(sender: Celery, **_: Any) -> None:
    """Beat keeps its schedule under the var folder, which a fresh deployment does not have yet."""
    Path(sender.conf.beat_schedule_filename).parent.mkdir(parents=True, exist_ok=True)


@signals.worker_init.connect
def _metrics_endpoint(**_: Any) -> None:
    """Runs in the worker's main process before its pool starts."""
    port = os.environ.get("CELERY_METRICS_PORT")
    if not port:
        return
    from django.core.exceptions import ImproperlyConfigured
    from prometheus_client import start_http_server

    from common.metrics import multiprocess_dir, multiprocess_dir_reset, multiprocess_registry

    path = multiprocess_dir()
    if path is None:
        raise ImproperlyConfigured(
            "CELERY_METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR in the worker's environment: "
            "the tasks run in pool processes, whose metrics are read from there."
        )
    multiprocess_dir_reset(path=path)
    start_http_server(
        int(port),
        addr=os.environ.get("CELERY_METRICS_ADDRESS", "127.0.0.1"),
        registry=multiprocess_registry(path=path),
    )


@signals.worker_process_shutdown.connect
def _metrics_process_dead(pid: int, **_: Any) -> None:
    """A pool process that ends cleanly drops its live gauges at once; the scrape forgets those
    of one that was killed."""
    from common.metrics import multiprocess_dir

    path = multiprocess_dir()
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)
