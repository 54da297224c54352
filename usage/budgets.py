"""Operator-side changes to budgets and rate limits (admin and management commands)."""

from __future__ import annotations

from django.core.cache import cache
from django.db import transaction

from accounts.models import APIKey, EndUserBudget, Membership, Organization
from accounts.services import api_key_update, organization_cache_invalidate, organization_update


class BudgetTargetNotFound(Exception):
    pass


def _limit(value: int | None) -> int | None:
    return None if value is None or value < 0 else value


@transaction.atomic
def budget_set(
    *,
    organization: Organization,
    tokens: int | None,
    period: str | None = None,
    user_email: str | None = None,
    key_prefix: str | None = None,
    end_user: str | None = None,
) -> str:
    """Sets (or with tokens=None removes) one budget. Returns a line describing it."""
    if user_email:
        membership = Membership.objects.filter(
            organization=organization, user__email=user_email.lower()
        ).first()
        if membership is None:
            raise BudgetTargetNotFound(f"{user_email} is not a member of {organization.slug}.")
        membership.token_budget = tokens
        membership.budget_period = period or membership.budget_period
        membership.save(update_fields=["token_budget", "budget_period"])
        organization_cache_invalidate(organization=organization)
        return f"member {user_email}: {tokens} tokens per {membership.budget_period}"
    if key_prefix:
        api_key = APIKey.objects.filter(organization=organization, prefix=key_prefix).first()
        if api_key is None:
            raise BudgetTargetNotFound(f"No key {key_prefix} in {organization.slug}.")
        api_key_update(api_key=api_key, token_budget=tokens, budget_period=period or api_key.budget_period)
        return f"key {key_prefix}: {tokens} tokens per {api_key.budget_period}"
    if end_user:
        if tokens is None:
            EndUserBudget.objects.filter(organization=organization, end_user=end_user).delete()
        else:
            EndUserBudget.objects.update_or_create(
                organization=organization,
                end_user=end_user,
                defaults={"token_budget": tokens, **({"budget_period": period} if period else {})},
            )
        cache_key = f"quota:enduser:{organization.pk}:{end_user}"
        cache.delete(cache_key)
        transaction.on_commit(lambda: cache.delete(cache_key))
        return f"end user {end_user}: {tokens} tokens"
    organization_update(
        organization=organization, token_quota=tokens, quota_period=period or organization.quota_period
    )
    return f"organization {organization.slug}: {tokens} tokens per {organization.quota_period}"


@transaction.atomic
def rate_limit_set(
    *,
    organization: Organization,
    key_prefix: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
) -> str:
    fields = {}
    if rpm is not None:
        fields["requests_per_minute"] = _limit(rpm)
    if tpm is not None:
        fields["tokens_per_minute"] = _limit(tpm)
    if key_prefix:
        api_key = APIKey.objects.filter(organization=organization, prefix=key_prefix).first()
        if api_key is None:
            raise BudgetTargetNotFound(f"No key {key_prefix} in {organization.slug}.")
        api_key_update(api_key=api_key, **fields)
        return f"key {key_prefix}: rpm={api_key.requests_per_minute} tpm={api_key.tokens_per_minute}"
    organization_update(organization=organization, **fields)
    return f"organization {organization.slug}: rpm={organization.requests_per_minute} tpm={organization.tokens_per_minute}"
