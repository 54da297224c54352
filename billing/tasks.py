from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from billing import services
from billing.alerts import spend_alerts_check_recent
from billing.periods import Period


@shared_task(name="billing.bill_previous_month", ignore_result=True)
def bill_previous_month() -> dict[str, object]:
    """Builds and sends last month's invoices (beat: early on the 1st of each month, UTC)."""
    services.subscriptions_activate()
    run = services.period_bill(period=Period.containing(timezone.now()).previous())
    return {"period": run.period.key, "invoices": len(run.invoices), "failures": run.failures}


@shared_task(name="billing.activate_plan_changes", ignore_result=True)
def activate_plan_changes() -> int:
    return services.subscriptions_activate()


@shared_task(name="billing.suspend_past_due", ignore_result=True)
def suspend_past_due() -> int:
    return services.past_due_suspend()


@shared_task(name="billing.spend_alerts", ignore_result=True)
def spend_alerts() -> int:
    """Sends the spend alerts that recent usage reached (billing.alerts)."""
    return spend_alerts_check_recent()
