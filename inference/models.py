from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from accounts.models import APIKey, Organization


class GenerationJob(models.Model):
    """A generation queued for a Celery worker (POST /api/v1/jobs/), polled by its id."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(APIKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # How the job's caller authenticated ("api_key", "jwt", "oauth2"): a job queued with a key
    # whose key is gone when it starts does not run.
    auth_method = models.CharField(max_length=16, blank=True)
    request_id = models.CharField(max_length=128)
    # The budget held for it from the moment it was queued (usage.services.quota_reserve).
    reservation_id = models.CharField(max_length=128, blank=True)
    reserved_tokens = models.PositiveIntegerField(default=0)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=("organization", "created_at"))]
