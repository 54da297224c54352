from __future__ import annotations

from django.db import models

from accounts.models import Organization
from common.sealed import unseal

EVENT_TYPES: tuple[str, ...] = (
    "budget.threshold",
    "budget.exhausted",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_failed",
    "document.indexed",
    "document.failed",
    "job.completed",
    "job.failed",
)


class WebhookEndpoint(models.Model):
    """An address of the tenant's that receives the events it chose, signed with its secret.
    The secret is kept sealed (each delivery is signed with it: `common.sealed`) and shown
    once, when it is made."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)
    secret_sealed = models.CharField(max_length=300, editable=False)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=("organization", "deleted_at"))]

    def __str__(self) -> str:
        return f"{self.url} ({self.organization})"

    def signing_secret(self) -> str:
        """Raises SealedSecretUnreadable when this deployment cannot open it."""
        return unseal(self.secret_sealed)


class WebhookDelivery(models.Model):
    """One event for one endpoint: its body is fixed when the event happens, and sent until the
    endpoint answers 2xx or the retry window ends."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=40)
    event_type = models.CharField(max_length=40)
    body = models.TextField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.UniqueConstraint(fields=("endpoint", "event_id"), name="one_delivery_per_endpoint_event"),
        ]
        indexes = [models.Index(fields=("status", "next_attempt_at"))]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} to {self.endpoint_id}"
