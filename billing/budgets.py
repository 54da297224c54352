"""Tenants' budgets and rate limits (`/api/v1/organization/budgets/`), never above what the
plan in force grants.

The writes go through the operators' budget services (`usage.budgets.budget_set`) and the
accounts services, so that every process's key cache forgets what changed; each change is
audited in its transaction (`budget.updated`, `budget.deleted`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.audit import Actor, audit_record, field_changes
from accounts.models import APIKey, BudgetPeriod, EndUserBudget, Membership, Organization
from accounts.self_service import api_key_get, member_get, member_list
from accounts.services import api_key_update
from billing.models import Plan
from billing.periods import today_utc
from billing.selectors import subscription_in_force
from billing.services import organization_update_locked
from common.errors import APIError
from usage.budgets import budget_set

TARGETS = ("organization", "member", "api_key", "end_user")
RATE_LIMITS = ("requests_per_minute", "tokens_per_minute")


def _plan_in_force(*, organization: Organization) -> Plan | None:
    subscription = subscription_in_force(organization=organization, day=today_utc(timezone.now()))
    return subscription.plan if subscription is not None else None


@dataclass(frozen=True)
class BudgetOverview:
    organization: Organization
    plan: Plan | None
    members: list[Membership]
    api_keys: list[APIKey]
    end_users: list[EndUserBudget]


def budget_overview(*, organization: Organization) -> BudgetOverview:
    """The organization's limits, what its plan grants, and the budgets of its members, its
    keys in use (not revoked) and its end users."""
    return BudgetOverview(
        organization=organization,
        plan=_plan_in_force(organization=organization),
        members=list(member_list(organization=organization)),
        api_keys=list(
            APIKey.objects.filter(organization=organization, revoked_at__isnull=True).order_by("created_at")
        ),
        end_users=list(EndUserBudget.objects.filter(organization=organization).order_by("end_user")),
    )


@dataclass(frozen=True)
class BudgetEntry:
    """One budget as it stands after a change."""

    target: str
    id: int | None
    end_user: str | None
    token_budget: int | None
    budget_period: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


def _check_within_plan(
    *,
    plan: Plan | None,
    target: str,
    token_budget: int | None,
    budget_period: str | None,
    rate_limits: Mapping[str, int | None],
) -> None:
    """Raises naming the field that asks for more than the plan grants. Null is "no limit of
    its own" for a member, a key or an end user (the organization's limits still hold), but
    "unlimited" for the organization, which the plan's limits then refuse."""
    if plan is None:
        return  # an organization no plan limits (an operator's arrangement)
    quota = plan.token_quota
    if quota is not None:
        if token_budget is None and target == "organization":
            raise APIError(
                f"Your plan grants {quota} tokens a month: the organization's budget cannot be unlimited.",
                param="token_budget",
                code="above_plan",
            )
        if token_budget is not None and token_budget > quota:
            raise APIError(
                f"token_budget cannot be above the {quota} tokens a month your plan grants.",
                param="token_budget",
                code="above_plan",
            )
        if target == "organization" and budget_period == BudgetPeriod.DAY:
            raise APIError(
                "Your plan grants tokens per month: the organization's budget resets monthly "
                "(month) or never (none), not daily.",
                param="budget_period",
                code="above_plan",
            )
    for name, value in rate_limits.items():
        ceiling = getattr(plan, name)
        if ceiling is None:
            continue
        if value is None and target == "organization":
            raise APIError(
                f"Your plan grants {ceiling} {name.replace('_', ' ')}: the organization's cannot be unlimited.",
                param=name,
                code="above_plan",
            )
        if value is not None and value > ceiling:
            raise APIError(
                f"{name} cannot be above the {ceiling} your plan grants.", param=name, code="above_plan"
            )


def _check_shape(
    *, target: str, target_id: int | None, end_user: str | None, rate_limits: Mapping[str, Any]
) -> None:
    if target not in TARGETS:
        raise APIError(f"target must be one of {', '.join(TARGETS)}.", param="target")
    if target in ("member", "api_key") and target_id is None:
        raise APIError(f"A {target.replace('_', ' ')} budget needs the `id` of the {target}.", param="id")
    if target in ("organization", "end_user") and target_id is not None:
        raise APIError(f"An {target.replace('_', ' ')} budget takes no `id`.", param="id")
    if target != "end_user" and end_user is not None:
        raise APIError("`end_user` is for the end_user target only.", param="end_user")
    if target in ("member", "end_user"):
        for name in rate_limits:
            raise APIError(
                f"A {target.replace('_', ' ')} has a token budget, no rate limits: set {name} on the "
                "organization or a key.",
                param=name,
            )


def _audit(
    *,
    organization: Organization,
    actor: Actor,
    changes: dict[str, Any],
    target: Any = None,
    target_label: str,
    action: str = "budget.updated",
) -> None:
    if changes:
        audit_record(
            organization=organization,
            actor=actor,
            action=action,
            target=target,
            target_label=target_label,
            changes=changes,
        )


@transaction.atomic
def budget_update(
    *,
    organization: Organization,
    actor: Actor,
    target: str,
    token_budget: int | None,
    target_id: int | None = None,
    end_user: str | None = None,
    budget_period: str | None = None,
    rate_limits: Mapping[str, int | None] | None = None,
) -> BudgetEntry:
    """Sets one budget: the organization's (its quota and rate limits), a member's, a key's
    (budget and rate limits), an end user's (`end_user`; None: the default of every end user).
    `token_budget=None` removes the budget (an end user's own row is deleted: the default applies
    again); `budget_period` and the `rate_limits` given (None: no limit of its own) change, the
    others stay. Another organization's member or key is 404, as a missing one."""
    rate_limits = dict(rate_limits or {})
    _check_shape(target=target, target_id=target_id, end_user=end_user, rate_limits=rate_limits)
    _check_within_plan(
        plan=_plan_in_force(organization=organization),
        target=target,
        token_budget=token_budget,
        budget_period=budget_period,
        rate_limits=rate_limits,
    )
    period = {"budget_period": budget_period} if budget_period is not None else {}

    if target == "organization":
        fields: dict[str, Any] = {"token_quota": token_budget, **rate_limits}
        if budget_period is not None:
            fields["quota_period"] = budget_period
        changes = field_changes(instance=organization, fields=fields)
        organization_update_locked(organization=organization, **fields)
        _audit(
            organization=organization,
            actor=actor,
            changes=changes,
            target=organization,
            target_label="organization",
        )
        return BudgetEntry(
            target=target,
            id=None,
            end_user=None,
            token_budget=organization.token_quota,
            budget_period=organization.quota_period,
            requests_per_minute=organization.requests_per_minute,
            tokens_per_minute=organization.tokens_per_minute,
        )

    if target == "member":
        assert target_id is not None
        membership = member_get(organization=organization, membership_id=target_id)
        changes = field_changes(instance=membership, fields={"token_budget": token_budget, **period})
        budget_set(
            organization=organization,
            tokens=token_budget,
            period=budget_period,
            user_email=membership.user.email,
        )
        membership.refresh_from_db()
        _audit(
            organization=organization,
            actor=actor,
            changes=changes,
            target=membership,
            target_label=membership.user.email,
        )
        return BudgetEntry(
            target=target,
            id=membership.pk,
            end_user=None,
            token_budget=membership.token_budget,
            budget_period=membership.budget_period,
        )

    if target == "api_key":
        assert target_id is not None
        api_key = api_key_get(organization=organization, key_id=target_id)
        if api_key.revoked_at is not None:
            raise APIError("A revoked key has no budget to change.", param="id", code="api_key_inactive")
        fields = {"token_budget": token_budget, **period, **rate_limits}
        changes = field_changes(instance=api_key, fields=fields)
        api_key_update(api_key=api_key, **fields)
        _audit(
            organization=organization, actor=actor, changes=changes, target=api_key, target_label=str(api_key)
        )
        return BudgetEntry(
            target=target,
            id=api_key.pk,
            end_user=None,
            token_budget=api_key.token_budget,
            budget_period=api_key.budget_period,
            requests_per_minute=api_key.requests_per_minute,
            tokens_per_minute=api_key.tokens_per_minute,
        )

    if end_user is None:  # the default budget of every end user
        fields = {"end_user_token_budget": token_budget}
        if budget_period is not None:
            fields["end_user_budget_period"] = budget_period
        changes = field_changes(instance=organization, fields=fields)
        organization_update_locked(organization=organization, **fields)
        _audit(
            organization=organization,
            actor=actor,
            changes=changes,
            target=organization,
            target_label="every end user",
        )
        return BudgetEntry(
            target=target,
            id=None,
            end_user=None,
            token_budget=organization.end_user_token_budget,
            budget_period=organization.end_user_budget_period,
        )

    existing = EndUserBudget.objects.filter(organization=organization, end_user=end_user).first()
    before = (existing.token_budget, existing.budget_period) if existing is not None else (None, None)
    budget_set(organization=organization, tokens=token_budget, period=budget_period, end_user=end_user)
    row = EndUserBudget.objects.filter(organization=organization, end_user=end_user).first()
    after = (row.token_budget, row.budget_period) if row is not None else (None, None)
    changes = {
        name: [old, new]
        for name, old, new in zip(("token_budget", "budget_period"), before, after, strict=True)
        if old != new
    }
    _audit(
        organization=organization,
        actor=actor,
        changes=changes,
        target_label=f"end user {end_user}",
        action="budget.deleted" if row is None else "budget.updated",
    )
    return BudgetEntry(
        target=target,
        id=None,
        end_user=end_user,
        token_budget=row.token_budget if row is not None else None,
        budget_period=row.budget_period if row is not None else organization.end_user_budget_period,
    )
