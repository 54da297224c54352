from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.scopes import ALL_SCOPES, role_scopes


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day"
    MONTH = "month", "Month"
    NONE = "none", "No reset"


def default_alert_thresholds() -> list[float]:
    return [0.5, 0.8, 1.0]


def validate_model_names(value: Any) -> None:
    """A list of model names, as clients send them in `model`."""
    if not isinstance(value, list) or not all(
        isinstance(name, str) and name.strip() and len(name) <= 256 for name in value
    ):
        raise ValidationError("A list of model names is required.")


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        if not email:
            raise ValueError("An email is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    def __str__(self) -> str:
        return self.email


class Organization(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.CharField(max_length=200, blank=True)

    # Limits; null means unlimited.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, default=600)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, default=200_000)
    token_quota = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per quota period for the whole organization."
    )
    quota_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    end_user_token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Default budget of each end user (the request's user_id)."
    )
    end_user_budget_period = models.CharField(
        max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.DAY
    )
    # Knowledge's own limits, beside the ones above (which every metered route counts against).
    search_requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Searches per minute (rag/'s retrieval not included)."
    )
    ingestion_token_quota = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens embedded by document ingestion per month."
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_model_names],
        help_text="The models (public names) this organization may use; empty: every model served. "
        "Set from the plan when it takes effect.",
    )

    # Spend alerts: the fractions of a token budget that send an alert (this organization's
    # quota, and every member's, key's and end user's budget that sets none of its own), and
    # amounts of this period's cost, in the plan's currency.
    alert_thresholds = models.JSONField(default=default_alert_thresholds, blank=True)
    cost_alert_amounts = models.JSONField(default=list, blank=True)

    # Billing.
    billing_email = models.EmailField(blank=True)
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    past_due_since = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"
        READER = "reader", "Reader"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens this member may spend per period; empty: no limit."
    )
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    alert_thresholds = models.JSONField(null=True, blank=True, help_text="Empty: the organization's.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("user", "organization"), name="unique_membership"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def scopes(self) -> frozenset[str]:
        """What the role grants (`accounts.scopes.ROLE_SCOPES`)."""
        return role_scopes(self.role)


class APIKey(models.Model):
    """An API key. Only a non-secret prefix (for lookup) and a SHA-256 hash of the whole key are
    stored; the key is shown once, when it is created."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text="The member the key acts for; empty for an organization-wide key.",
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)

    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Stricter than the organization's limit; empty: inherit."
    )
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    token_budget = models.PositiveBigIntegerField(null=True, blank=True)
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    alert_thresholds = models.JSONField(null=True, blank=True, help_text="Empty: the organization's.")

    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The key a rotation made to replace this one (which then expires after its grace).",
    )
    budget_lineage = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="The first key of the rotations this one descends from: they share one token budget.",
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "API key"
        ordering = ("-created_at",)
        indexes = [models.Index(fields=("organization", "revoked_at"))]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def budget_subject(self) -> int:
        """Whose token budget this key counts against: its own, or, once rotated, that of the
        first key of its line (a rotation does not start the budget afresh)."""
        return self.budget_lineage or self.pk

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, *, now: Any = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    def clean_scopes(self) -> list[str]:
        return [scope for scope in self.scopes if scope in ALL_SCOPES]


class OAuthClient(models.Model):
    """Links a django-oauth-toolkit client-credentials application to the organization it acts for."""

    application = models.OneToOneField(
        "oauth2_provider.Application", on_delete=models.CASCADE, related_name="platform_client"
    )
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="oauth_clients")
    scopes = models.JSONField(default=list, help_text="Scopes this client may be granted.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "OAuth2 client"

    def __str__(self) -> str:
        return f"{self.application.name} ({self.organization})"


class EndUserBudget(models.Model):
    """A budget for one end user (the `user_id` a tenant passes), overriding the organization's
    default end-user budget."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="end_user_budgets")
    end_user = models.CharField(max_length=128)
    token_budget = models.PositiveBigIntegerField()
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.DAY)
    alert_thresholds = models.JSONField(null=True, blank=True, help_text="Empty: the organization's.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("organization", "end_user"), name="unique_end_user_budget"),
            models.CheckConstraint(condition=~Q(end_user=""), name="end_user_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.end_user} in {self.organization}"


class Invitation(models.Model):
    """An invitation to join an organization with a role, accepted once, with the token sent to
    `email` (only its SHA-256 is stored). A new invitation to the same address replaces the
    pending one."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("organization", "email"),
                condition=Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="one_pending_invitation_per_email",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.organization} ({self.role})"

    def is_pending(self, *, now: Any = None) -> bool:
        return (
            self.accepted_at is None and self.revoked_at is None and self.expires_at > (now or timezone.now())
        )


class AuditEvent(models.Model):
    """One change made to an organization: by whom (a member, a key, an OAuth2 client, an
    operator in the admin), what, when and from which address. Written by the services' callers
    in the same transaction as the change, never edited."""

    class ActorType(models.TextChoices):
        MEMBER = "member", "Member"
        API_KEY = "api_key", "API key"
        OAUTH_CLIENT = "oauth_client", "OAuth2 client"
        OPERATOR = "operator", "Operator"
        ANONYMOUS = "anonymous", "Anonymous"  # sign-up, an invitation's acceptance

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="audit_events")
    created_at = models.DateTimeField(default=timezone.now)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Kept as text so that the event still says who after the user or key is gone.
    actor_label = models.CharField(max_length=254)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=254, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=("organization", "-created_at"))]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_label} at {self.created_at:%Y-%m-%d %H:%M:%S}"
