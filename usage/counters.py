"""Which token budgets a request counts against, as the ledger's counters: the organization's
quota (and its ingestion quota), the member's, the key's (one across its rotations) and the end
user's; and what a counter has used so far, from the durable usage records, for a ledger that
lost it (Redis restarted, a new period)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache as django_cache
from django.utils import timezone

from accounts.context import AuthContext
from accounts.models import BudgetPeriod, EndUserBudget, Organization
from usage import periods
from usage.ledger import Counter
from usage.selectors import tokens_used_since


def _counter(
    *, scope: str, subject: str, label: str, limit: int, period: str, organization_id: int, now: datetime
) -> Counter:
    end = periods.period_end(period, now)
    ttl = int((end - now).total_seconds()) + 86_400 if end else 400 * 86_400
    return Counter(
        key=f"{scope}:{subject}:{periods.period_key(period, now)}",
        label=label,
        limit=limit,
        threshold=max(1, int(limit * settings.BUDGET_SOFT_THRESHOLD)),
        ttl_seconds=ttl,
        organization_id=organization_id,
        period=periods.period_key(period, now),
    )


def end_user_budget_get(*, organization: Organization, end_user: str) -> tuple[int, str] | None:
    """The end user's own budget, else the organization's default; cached (set_budget clears it)."""
    cache_key = f"quota:enduser:{organization.pk}:{end_user}"
    cached = django_cache.get(cache_key)
    if cached is None:
        override = EndUserBudget.objects.filter(organization=organization, end_user=end_user).first()
        cached = [override.token_budget, override.budget_period] if override is not None else []
        django_cache.set(cache_key, cached, timeout=settings.API_KEY_CACHE_SECONDS)
    if cached:
        return int(cached[0]), str(cached[1])
    if organization.end_user_token_budget is not None:
        return organization.end_user_token_budget, organization.end_user_budget_period
    return None


def budget_counters(
    *, context: AuthContext, end_user: str | None, now: datetime | None = None, endpoint: str | None = None
) -> list[Counter]:
    """The budgets a request to `endpoint` counts against (every one, when None: `/me`)."""
    now = now or timezone.now()
    org = context.organization
    counters = []
    if org.ingestion_token_quota is not None and endpoint in (None, "ingestion"):
        counters.append(
            _counter(
                scope="ingestion",
                subject=str(org.pk),
                label=f"organization '{org.slug}' ingestion token quota",
                limit=org.ingestion_token_quota,
                period=BudgetPeriod.MONTH,
                organization_id=org.pk,
                now=now,
            )
        )
    if org.token_quota is not None:
        counters.append(
            _counter(
                scope="organization",
                subject=str(org.pk),
                label=f"organization '{org.slug}' token quota",
                limit=org.token_quota,
                period=org.quota_period,
                organization_id=org.pk,
                now=now,
            )
        )
    membership = context.membership
    if membership is not None and membership.token_budget is not None and context.user is not None:
        counters.append(
            _counter(
                scope="member",
                # A user can belong to several organizations, each with its own budget for them.
                subject=f"{org.pk}:{context.user.pk}",
                label=f"member '{context.user.email}' token budget",
                limit=membership.token_budget,
                period=membership.budget_period,
                organization_id=org.pk,
                now=now,
            )
        )
    key = context.api_key
    if key is not None and key.token_budget is not None:
        counters.append(
            _counter(
                scope="api_key",
                subject=str(key.budget_subject),  # one budget across the key's rotations
                label=f"API key '{key.name}' ({key.prefix}…) token budget",
                limit=key.token_budget,
                period=key.budget_period,
                organization_id=org.pk,
                now=now,
            )
        )
    if end_user:
        found = end_user_budget_get(organization=org, end_user=end_user)
        if found is not None:
            limit, period = found
            counters.append(
                _counter(
                    scope="end_user",
                    # End user ids are the tenant's own: two tenants' "42" are two people.
                    subject=f"{org.pk}:{end_user}",
                    label=f"end user '{end_user}' token budget",
                    limit=limit,
                    period=period,
                    organization_id=org.pk,
                    now=now,
                )
            )
    return counters


def initial_used(counter: Counter) -> int:
    scope, rest = counter.key.split(":", 1)
    subject, period_key = rest.rsplit(":", 1)
    if scope in ("member", "end_user"):
        subject = subject.split(":", 1)[1]  # after the organization's id
    since: datetime | None = None
    if period_key.startswith("d"):
        since = datetime.strptime(period_key[1:], "%Y-%m-%d").replace(tzinfo=UTC)
    elif period_key.startswith("m"):
        since = datetime.strptime(period_key[1:], "%Y-%m").replace(tzinfo=UTC)
    return tokens_used_since(
        organization_id=counter.organization_id, scope=scope, subject=subject, since=since
    )
