from __future__ import annotations

from django.db import models

from accounts.models import APIKey, Organization


class UsageRecord(models.Model):
    """One admitted request, as charged. Written in batches from the settlement stream, so
    recording costs the request no database round trip. `reservation_id`, which the server
    makes, is the record's identity: a replayed stream entry is harmless, and nothing a client
    sends (its `X-Request-ID` is only echoed in `request_id`) can merge two requests. A record
    is revised once at most: an expired reservation charged what it held, then corrected by
    its late settlement.

    The ids it names are kept whatever happens to what they name: no database constraint can
    refuse a usage row (a key or user deleted while its record is queued), and an organization
    with usage cannot be deleted (suspend it instead)."""

    class Status(models.TextChoices):
        OK = "ok", "Completed"
        CANCELLED = "cancelled", "Cancelled by the client"
        ERROR = "error", "Failed"
        EXPIRED = "expired", "Abandoned (charged what it reserved)"

    reservation_id = models.CharField(max_length=128, unique=True)
    revision = models.PositiveSmallIntegerField(default=0)
    request_id = models.CharField(max_length=128, db_index=True)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, db_constraint=False, related_name="+"
    )
    api_key = models.ForeignKey(
        APIKey, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    user_id = models.BigIntegerField(null=True, blank=True)
    end_user = models.CharField(max_length=128, blank=True)
    endpoint = models.CharField(max_length=64)
    model = models.CharField(max_length=128)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=("organization", "created_at"))]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageDaily(models.Model):
    """Usage rolled up per day and dimension; reports read these for every closed day."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, db_constraint=False, related_name="+"
    )
    day = models.DateField()
    model = models.CharField(max_length=128)
    # 0 rather than NULL for "none", so that the unique constraint sees one row per group.
    api_key_id = models.BigIntegerField(default=0)
    user_id = models.BigIntegerField(default=0)
    end_user = models.CharField(max_length=128, blank=True)
    endpoint = models.CharField(max_length=64)
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "usage (daily)"
        constraints = [
            models.UniqueConstraint(
                fields=("organization", "day", "model", "api_key_id", "user_id", "end_user", "endpoint"),
                name="one_rollup_per_group",
            )
        ]


class BudgetEvent(models.Model):
    """A budget crossed its soft threshold or ran out; operators see these in the admin."""

    class Kind(models.TextChoices):
        THRESHOLD = "threshold", "Soft threshold crossed"
        EXHAUSTED = "exhausted", "Exhausted"

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, db_constraint=False, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    budget = models.CharField(max_length=200)
    period = models.CharField(max_length=16)
    used = models.PositiveBigIntegerField()
    limit = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("organization", "kind", "budget", "period"), name="one_event_per_budget_period"
            )
        ]


class UsageDeadLetter(models.Model):
    """A settlement stream entry the flush could not write (malformed, or refused by the
    database). Set aside so that every other entry lands; an operator fixes the cause and
    retries it from the admin."""

    class Stream(models.TextChoices):
        RECORDS = "records", "Usage records"
        EVENTS = "events", "Budget events"

    stream = models.CharField(max_length=16, choices=Stream.choices)
    entry_id = models.CharField(max_length=64)
    payload = models.TextField()
    error = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
