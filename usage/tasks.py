from __future__ import annotations

from celery import shared_task

from usage import services


@shared_task(name="usage.flush_stream", ignore_result=True)
def flush_usage_stream() -> int:
    return services.usage_stream_flush()


@shared_task(name="usage.expire_reservations", ignore_result=True)
def expire_reservations() -> int:
    return services.reservations_expire()
