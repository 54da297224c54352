from __future__ import annotations

from celery import shared_task

from webhooks import services


@shared_task(name="webhooks.deliver", ignore_result=True)
def webhook_deliver(delivery_id: int) -> None:
    services.delivery_attempt(delivery_id=delivery_id)


@shared_task(name="webhooks.deliver_due", ignore_result=True)
def webhook_deliveries_due() -> int:
    """Retries whose time has come, and first attempts whose task was lost."""
    due = services.deliveries_due()
    for delivery_id in due:
        services.delivery_attempt(delivery_id=delivery_id)
    return len(due)
