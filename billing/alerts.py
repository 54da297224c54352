"""Spend alerts: a tenant hears before it hits the wall.

Every token budget has thresholds (fractions of its limit: its own `alert_thresholds`, else its
organization's, by default 50%, 80% and 100%); an organization on a priced plan may also set
amounts of this period's cost (`cost_alert_amounts`). When usage reaches one, the alert is sent
once per budget, period and threshold (a `SpendAlert` row is the proof it was): by email to the
owners and the billing email, and to the organization's webhook endpoints (`budget.threshold`,
or `budget.exhausted` at 100%, with `data.threshold`).

Usage is read from the durable usage records, so the check runs after the usage flush: beat
runs `spend_alerts_check` every `SPEND_ALERT_SECONDS` for the organizations that used something
since the previous run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.audit import Actor, audit_record, field_changes
from accounts.models import APIKey, EndUserBudget, Membership, Organization
from billing.models import SpendAlert
from billing.selectors import invoice_estimate
from billing.services import organization_update_locked
from common.errors import APIError, NotFound
from usage.models import UsageRecord
from usage.periods import period_key, period_start
from usage.selectors import tokens_used_since
from webhooks.services import webhook_emit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenBudget:
    budget: str  # organization | member:<user id> | key:<key id> | end_user:<id>
    label: str
    scope: str  # as tokens_used_since reads it
    subject: str
    limit: int
    period: str
    thresholds: list[float]


def _thresholds(own: Any, organization: Organization) -> list[float]:
    chosen = own if isinstance(own, list) and own else organization.alert_thresholds
    try:
        return sorted({float(value) for value in chosen if 0 < float(value) <= 1})
    except (TypeError, ValueError):
        return [0.5, 0.8, 1.0]


def _token_budgets(organization: Organization) -> list[TokenBudget]:
    budgets = []
    if organization.token_quota:
        budgets.append(
            TokenBudget(
                "organization",
                f"organization '{organization.slug}' token quota",
                "organization",
                str(organization.pk),
                organization.token_quota,
                organization.quota_period,
                _thresholds(None, organization),
            )
        )
    for membership in Membership.objects.filter(
        organization=organization, token_budget__isnull=False
    ).select_related("user"):
        budgets.append(
            TokenBudget(
                f"member:{membership.user_id}",
                f"member {membership.user.email} token budget",
                "member",
                str(membership.user_id),
                membership.token_budget or 0,
                membership.budget_period,
                _thresholds(membership.alert_thresholds, organization),
            )
        )
    for key in APIKey.objects.filter(
        organization=organization, token_budget__isnull=False, revoked_at__isnull=True
    ):
        budgets.append(
            TokenBudget(
                # Its rotations share the budget, and so its alerts (`APIKey.budget_lineage`).
                f"key:{key.budget_subject}",
                f"API key '{key.name}' ({key.prefix}…) token budget",
                "api_key",
                str(key.budget_subject),
                key.token_budget or 0,
                key.budget_period,
                _thresholds(key.alert_thresholds, organization),
            )
        )
    for end_user in EndUserBudget.objects.filter(organization=organization):
        budgets.append(
            TokenBudget(
                f"end_user:{end_user.end_user}",
                f"end user '{end_user.end_user}' token budget",
                "end_user",
                end_user.end_user,
                end_user.token_budget,
                end_user.budget_period,
                _thresholds(end_user.alert_thresholds, organization),
            )
        )
    return [budget for budget in budgets if budget.limit > 0]


def _recipients(organization: Organization) -> list[str]:
    owners = Membership.objects.filter(
        organization=organization, role=Membership.Role.OWNER, user__is_active=True
    )
    emails = {membership.user.email for membership in owners.select_related("user")}
    if organization.billing_email:
        emails.add(organization.billing_email)
    return sorted(emails)


def _send(
    organization: Organization, alert: SpendAlert, subject: str, text: str, data: dict[str, Any]
) -> None:
    exhausted = alert.kind == SpendAlert.Kind.TOKENS and Decimal(alert.threshold) >= 1
    webhook_emit(
        organization_id=organization.pk,
        type="budget.exhausted" if exhausted else "budget.threshold",
        data=data,
    )
    recipients = _recipients(organization)

    def mail() -> None:
        try:
            send_mail(subject=subject, message=text, from_email=None, recipient_list=recipients)
        except Exception:  # the webhook and the SpendAlert row stand; the log says what was missed
            logger.exception("spend alert email to %s could not be sent", recipients)

    if recipients:
        transaction.on_commit(mail)


def _record(organization: Organization, **fields: Any) -> SpendAlert | None:
    """The alert, if this is its first crossing (None when it was already sent)."""
    try:
        with transaction.atomic():
            return SpendAlert.objects.create(organization=organization, **fields)
    except IntegrityError:
        return None


def _check_tokens(organization: Organization, now: datetime) -> int:
    sent = 0
    for budget in _token_budgets(organization):
        since = period_start(budget.period, now)
        used = tokens_used_since(
            organization_id=organization.pk, scope=budget.scope, subject=budget.subject, since=since
        )
        period = period_key(budget.period, now)
        for threshold in budget.thresholds:
            if used < threshold * budget.limit:
                break
            alert = _record(
                organization,
                kind=SpendAlert.Kind.TOKENS,
                budget=budget.budget,
                period=period,
                threshold=f"{threshold:g}",
                used=used,
                limit=budget.limit,
            )
            if alert is None:
                continue
            sent += 1
            percent = f"{threshold:.0%}"
            _send(
                organization,
                alert,
                f"{organization.name}: {budget.label} at {percent}",
                f"{organization.name} has used {used} of the {budget.limit} tokens of its {budget.label} "
                f"this period ({period}), which reaches the {percent} alert.",
                {
                    "kind": "tokens",
                    "budget": budget.label,
                    "period": period,
                    "threshold": threshold,
                    "used": used,
                    "limit": budget.limit,
                },
            )
    return sent


def _check_cost(organization: Organization, now: datetime) -> int:
    amounts = []
    for value in organization.cost_alert_amounts or []:
        try:
            amounts.append(Decimal(str(value)))
        except InvalidOperation:
            continue
    if not amounts:
        return 0
    estimate = invoice_estimate(organization=organization, now=now)
    if estimate.priced is None:
        return 0
    total, currency = estimate.priced.total, estimate.priced.currency
    sent = 0
    for amount in sorted(amount for amount in amounts if amount > 0):
        if total < amount:
            break
        alert = _record(
            organization,
            kind=SpendAlert.Kind.COST,
            budget="cost",
            period=estimate.period.key,
            threshold=str(amount),
            used=total,
            limit=amount,
        )
        if alert is None:
            continue
        sent += 1
        _send(
            organization,
            alert,
            f"{organization.name}: this period's cost reached {amount} {currency.upper()}",
            f"{organization.name}'s estimated cost for {estimate.period.key} is {total} {currency.upper()}, "
            f"past the {amount} {currency.upper()} alert.",
            {
                "kind": "cost",
                "period": estimate.period.key,
                "threshold": str(amount),
                "used": str(total),
                "currency": currency,
            },
        )
    return sent


def spend_alerts_check(*, organization: Organization, now: datetime | None = None) -> int:
    """Sends the organization's alerts that usage has reached and that were not sent yet this
    period; returns how many were sent."""
    now = now or timezone.now()
    with transaction.atomic():
        return _check_tokens(organization, now) + _check_cost(organization, now)


def spend_alerts_check_recent(*, since: datetime | None = None, now: datetime | None = None) -> int:
    """Checks every organization with usage recorded since `since` (beat: the last few minutes)."""
    now = now or timezone.now()
    since = since or now - timedelta(seconds=3 * settings.SPEND_ALERT_SECONDS)
    ids = (
        UsageRecord.objects.filter(created_at__gte=since).values_list("organization_id", flat=True).distinct()
    )
    sent = 0
    for organization in Organization.objects.filter(pk__in=list(ids)):
        sent += spend_alerts_check(organization=organization, now=now)
    return sent


def _fractions(values: list[Any]) -> list[float]:
    try:
        chosen = sorted({float(value) for value in values})
    except (TypeError, ValueError) as error:
        raise APIError(
            "Thresholds are fractions of a budget, from 0 to 1.", param="alert_thresholds"
        ) from error
    if not chosen or chosen[0] <= 0 or chosen[-1] > 1:
        raise APIError(
            "Thresholds are fractions of a budget, above 0 and at most 1.", param="alert_thresholds"
        )
    return chosen


def _amounts(values: list[Any]) -> list[str]:
    try:
        chosen = sorted({Decimal(str(value)) for value in values})
    except InvalidOperation as error:
        raise APIError("Cost alerts are amounts of money.", param="cost_alert_amounts") from error
    if chosen and chosen[0] <= 0:
        raise APIError("Cost alerts are positive amounts.", param="cost_alert_amounts")
    return [str(amount.quantize(Decimal("0.01"))) for amount in chosen]


@transaction.atomic
def alert_settings_update(
    *,
    organization: Organization,
    actor: Actor,
    alert_thresholds: list[Any] | None = None,
    cost_alert_amounts: list[Any] | None = None,
) -> Organization:
    """The organization's default thresholds (every budget without its own) and its cost alerts."""
    fields: dict[str, Any] = {}
    if alert_thresholds is not None:
        fields["alert_thresholds"] = _fractions(alert_thresholds)
    if cost_alert_amounts is not None:
        fields["cost_alert_amounts"] = _amounts(cost_alert_amounts)
    changes = field_changes(instance=organization, fields=fields)
    if changes:
        organization_update_locked(organization=organization, **fields)
        audit_record(
            organization=organization,
            actor=actor,
            action="alerts.updated",
            target=organization,
            changes=changes,
        )
    return organization


def spend_alert_list(*, organization: Organization) -> Any:
    return SpendAlert.objects.filter(organization=organization)


@transaction.atomic
def budget_alert_thresholds_set(
    *,
    organization: Organization,
    actor: Actor,
    target: str,
    target_id: int | None,
    end_user: str | None,
    thresholds: list[Any] | None,
) -> None:
    """One budget's own thresholds (None: its organization's again)."""
    value = _fractions(thresholds) if thresholds is not None else None
    subject: Any
    if target == "organization":
        if value is None:
            raise APIError(
                "The organization's thresholds are the default: give some.", param="alert_thresholds"
            )
        alert_settings_update(organization=organization, actor=actor, alert_thresholds=value)
        return
    if target == "member":
        subject = Membership.objects.filter(organization=organization, pk=target_id or 0).first()
    elif target == "api_key":
        subject = APIKey.objects.filter(organization=organization, pk=target_id or 0).first()
    elif end_user is not None:
        subject = EndUserBudget.objects.filter(organization=organization, end_user=end_user).first()
        if subject is None:
            raise APIError("Set this end user's own budget first.", param="alert_thresholds")
    else:
        raise APIError(
            "The default end-user budget uses the organization's thresholds (organization/alerts/).",
            param="alert_thresholds",
        )
    if subject is None:
        raise NotFound(f"No such {target.replace('_', ' ')}.", param="id")
    changes = field_changes(instance=subject, fields={"alert_thresholds": value})
    if changes:
        subject.alert_thresholds = value
        subject.save(update_fields=["alert_thresholds"])
        audit_record(
            organization=organization,
            actor=actor,
            action="budget.alerts_updated",
            target=subject,
            changes=changes,
        )
