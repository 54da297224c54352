"""The console's pages. Each one reads through the apps' selectors and changes things through the
same functions the API's views call (`accounts.self_service`, `accounts.invitations`,
`billing.services`), as the signed-in member, so the rules, the errors and the audit log are the
API's. The pages that move while you look (usage chart, ingestion progress, search, the
playground's stream) call the API itself from `console.js` with a short-lived token."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts import invitations, self_service
from accounts.audit import audit_event_list
from accounts.scopes import (
    BILLING_READ,
    BILLING_WRITE,
    DOCUMENTS_READ,
    GENERATE,
    ORGANIZATION_READ,
    ORGANIZATION_WRITE,
    USAGE_READ,
)
from billing.payments import payment_methods_list
from billing.periods import Period, today_utc
from billing.selectors import (
    invoice_estimate,
    invoice_get,
    invoice_list,
    plan_choice,
    plan_get_choosable,
    plan_price_list,
)
from billing.services import subscription_change
from billing.stripe_sync import stripe_enabled
from common.errors import APIError
from console.context import Console, console_page
from console.forms import InviteForm, KeyCreateForm, PlanForm, RoleForm, RotateForm
from inference.services import router_get
from usage.selectors import usage_report, usage_report_csv
from usage.serializers import UsageQuerySerializer
from usage.services import budget_views


def _page(
    request: HttpRequest, console: Console, template: str, status: int = 200, **context: Any
) -> HttpResponse:
    return render(request, f"console/{template}", {"console": console, **context}, status=status)


def _back(request: HttpRequest, to: str, error: APIError | None = None) -> HttpResponse:
    if error is not None:
        messages.error(request, error.message)
    return HttpResponseRedirect(to)


@require_GET
@console_page()
def overview(request: HttpRequest, console: Console) -> HttpResponse:
    now = timezone.now()
    period = Period.of(today_utc(now))
    tokens = {"prompt": 0, "completion": 0}
    if console.can(USAGE_READ):
        for row in usage_report(
            organization=console.organization, start=period.start, end=today_utc(now), group_by="model"
        ):
            tokens["prompt"] += row["prompt_tokens"]
            tokens["completion"] += row["completion_tokens"]
    estimate = (
        invoice_estimate(organization=console.organization, now=now) if console.can(BILLING_READ) else None
    )
    budgets = []
    for view in budget_views(context=console.auth_context()):
        used_pct = min(100.0, 100.0 * view.used / view.limit) if view.limit else 0.0
        reserved_pct = min(100.0 - used_pct, 100.0 * view.reserved / view.limit) if view.limit else 0.0
        budgets.append({"view": view, "used_pct": round(used_pct, 1), "reserved_pct": round(reserved_pct, 1)})
    return _page(
        request,
        console,
        "overview.html",
        period=period,
        tokens=tokens,
        estimate=estimate,
        budgets=budgets,
        organization=console.organization,
        engine=router_get().default_status(),
    )


# Keys.


def _members(console: Console) -> list[Any]:
    return list(self_service.member_list(organization=console.organization))


@console_page(scope=ORGANIZATION_READ)
def keys(request: HttpRequest, console: Console) -> HttpResponse:
    form = KeyCreateForm(request.POST or None, members=_members(console), initial={"user": console.user.pk})
    issued = None
    status = 200
    if request.method == "POST":
        if not console.can(ORGANIZATION_WRITE):
            return _page(request, console, "forbidden.html", status=403, scope=ORGANIZATION_WRITE)
        if form.is_valid():
            data = form.cleaned_data
            try:
                issued = self_service.key_issue(
                    organization=console.organization,
                    actor=console.actor(request),
                    name=data["name"],
                    for_user_id=data["user"],
                    scopes=data["scopes"] or None,
                    expires_in_days=data["expires_in_days"],
                    token_budget=data["token_budget"],
                    budget_period=data["budget_period"],
                    requests_per_minute=data["requests_per_minute"],
                    tokens_per_minute=data["tokens_per_minute"],
                )
            except APIError as error:
                form.add_error(error.param if error.param in form.fields else None, error.message)
                status = error.status
            else:
                form = KeyCreateForm(members=_members(console), initial={"user": console.user.pk})
        else:
            status = 400
    listed = self_service.api_key_list(organization=console.organization).order_by(
        "revoked_at", "-created_at"
    )
    return _page(
        request,
        console,
        "keys.html",
        status=status,
        form=form,
        issued=issued,
        keys=listed,
        rotate_form=RotateForm(),
    )


@require_POST
@console_page(scope=ORGANIZATION_WRITE)
def key_revoke(request: HttpRequest, console: Console, key_id: int) -> HttpResponse:
    try:
        api_key = self_service.api_key_get(organization=console.organization, key_id=key_id)
        self_service.key_revoke(
            organization=console.organization, actor=console.actor(request), api_key=api_key
        )
    except APIError as error:
        return _back(request, "/console/keys/", error)
    messages.success(request, f"Revoked {api_key.name} ({api_key.prefix}…).")
    return HttpResponseRedirect("/console/keys/")


@require_POST
@console_page(scope=ORGANIZATION_WRITE)
def key_rotate(request: HttpRequest, console: Console, key_id: int) -> HttpResponse:
    form = RotateForm(request.POST)
    if not form.is_valid():
        return _back(request, "/console/keys/", APIError("grace_seconds must be from 0 to 604800."))
    try:
        api_key = self_service.api_key_get(organization=console.organization, key_id=key_id)
        issued = self_service.key_rotate(
            organization=console.organization,
            actor=console.actor(request),
            api_key=api_key,
            grace_seconds=form.cleaned_data["grace_seconds"],
        )
    except APIError as error:
        return _back(request, "/console/keys/", error)
    listed = self_service.api_key_list(organization=console.organization).order_by(
        "revoked_at", "-created_at"
    )
    form_create = KeyCreateForm(members=_members(console), initial={"user": console.user.pk})
    return _page(
        request, console, "keys.html", form=form_create, issued=issued, keys=listed, rotate_form=RotateForm()
    )


# Members.


@console_page(scope=ORGANIZATION_READ)
def members(request: HttpRequest, console: Console) -> HttpResponse:
    form = InviteForm(request.POST or None)
    created = None
    status = 200
    if request.method == "POST":
        if not console.can(ORGANIZATION_WRITE):
            return _page(request, console, "forbidden.html", status=403, scope=ORGANIZATION_WRITE)
        if form.is_valid():
            try:
                created = invitations.invitation_create(
                    organization=console.organization,
                    actor=console.actor(request),
                    email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"],
                    base_url=request.build_absolute_uri("/"),
                )
            except APIError as error:
                form.add_error("email" if error.param == "email" else "role", error.message)
                status = error.status
            else:
                form = InviteForm()
        else:
            status = 400
    return _page(
        request,
        console,
        "members.html",
        status=status,
        form=form,
        created=created,
        members=self_service.member_list(organization=console.organization),
        pending=self_service.invitation_list_pending(organization=console.organization),
        roles=RoleForm.base_fields["role"].choices,  # type: ignore[attr-defined]
    )


@require_POST
@console_page(scope=ORGANIZATION_WRITE)
def member_role(request: HttpRequest, console: Console, membership_id: int) -> HttpResponse:
    form = RoleForm(request.POST)
    if not form.is_valid():
        return _back(request, "/console/members/", APIError("Choose a role."))
    try:
        membership = self_service.member_get(organization=console.organization, membership_id=membership_id)
        self_service.member_role_change(
            organization=console.organization,
            actor=console.actor(request),
            membership=membership,
            role=form.cleaned_data["role"],
        )
    except APIError as error:
        return _back(request, "/console/members/", error)
    messages.success(request, f"{membership.user.email} is now {form.cleaned_data['role']}.")
    return HttpResponseRedirect("/console/members/")


@require_POST
@console_page(scope=ORGANIZATION_WRITE)
def member_remove(request: HttpRequest, console: Console, membership_id: int) -> HttpResponse:
    try:
        membership = self_service.member_get(organization=console.organization, membership_id=membership_id)
        self_service.member_remove(
            organization=console.organization, actor=console.actor(request), membership=membership
        )
    except APIError as error:
        return _back(request, "/console/members/", error)
    messages.success(request, f"Removed {membership.user.email}.")
    return HttpResponseRedirect("/console/members/")


# Usage, documents, playground: pages whose data the script reads from the API.


@require_GET
@console_page(scope=USAGE_READ)
def usage(request: HttpRequest, console: Console) -> HttpResponse:
    today = today_utc(timezone.now())
    return _page(request, console, "usage.html", start=Period.of(today).start, end=today)


@require_GET
@console_page(scope=USAGE_READ)
def usage_csv(request: HttpRequest, console: Console) -> HttpResponse:
    """The usage report as CSV, as the API's `format=csv` answers it (a link cannot send the
    API's bearer token, so the console serves the download itself, from the same selector)."""
    query = UsageQuerySerializer(data=request.GET)
    if not query.is_valid():
        return HttpResponse(json.dumps(query.errors), status=400, content_type="application/json")
    params = query.validated_data
    rows = usage_report(
        organization=console.organization,
        start=params["start"],
        end=params["end"],
        group_by=params["group_by"],
        split_by=params.get("split_by"),
    )
    response = HttpResponse(
        usage_report_csv(rows=rows, group_by=params["group_by"], split_by=params.get("split_by")),
        content_type="text/csv",
    )
    name = f"usage-{console.organization.slug}-{params['start']}-{params['end']}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@require_GET
@console_page(scope=DOCUMENTS_READ)
def documents(request: HttpRequest, console: Console) -> HttpResponse:
    return _page(request, console, "documents.html", can_write=console.can("documents:write"))


def _prices(console: Console) -> dict[str, Any]:
    """The prices of the plan in force, per model (`*`: any other), for the playground's cost."""
    estimate = invoice_estimate(organization=console.organization, now=timezone.now())
    if estimate.subscription is None:
        return {}
    price_list = plan_price_list(plan=estimate.subscription.plan)
    prices: dict[str, Any] = {"currency": price_list.currency, "models": {}}
    rates = {"*": price_list.default_rates, **price_list.model_rates}
    for model, rate in rates.items():
        prices["models"][model] = [str(rate.prompt), str(rate.completion)]
    return prices


@require_GET
@console_page(scope=GENERATE)
def playground(request: HttpRequest, console: Console) -> HttpResponse:
    prices = _prices(console) if console.can(BILLING_READ) else {}
    return _page(request, console, "playground.html", prices=json.dumps(prices))


# Billing.


@console_page(scope=BILLING_READ)
def billing(request: HttpRequest, console: Console) -> HttpResponse:
    now = timezone.now()
    if request.method == "POST":
        if not console.can(BILLING_WRITE):
            return _page(request, console, "forbidden.html", status=403, scope=BILLING_WRITE)
        form = PlanForm(request.POST)
        plan = None
        if form.is_valid():
            plan = plan_get_choosable(
                organization=console.organization, slug=form.cleaned_data["plan"], day=today_utc(now)
            )
        if plan is None:
            return _back(request, "/console/billing/", APIError("No such plan."))
        try:
            subscription = subscription_change(
                organization=console.organization, plan=plan, actor=console.actor(request)
            )
        except APIError as error:
            return _back(request, "/console/billing/", error)
        messages.success(request, f"{plan.name} from {subscription.starts_on:%Y-%m-%d}.")
        return HttpResponseRedirect("/console/billing/")
    choice = plan_choice(organization=console.organization, day=today_utc(now))
    estimate = invoice_estimate(organization=console.organization, now=now)
    return _page(
        request,
        console,
        "billing.html",
        cards=payment_methods_list(organization=console.organization),
        card_form=console.can(BILLING_WRITE) and stripe_enabled(),
        stripe_js_url=settings.STRIPE_JS_URL,
        stripe_publishable_key=settings.STRIPE_PUBLISHABLE_KEY,
        choice=choice,
        estimate=estimate,
        total=estimate.priced.total if estimate.priced is not None else Decimal("0.00"),
        invoices=invoice_list(organization=console.organization),
        can_change=console.can(BILLING_WRITE),
    )


@require_GET
@console_page(scope=BILLING_READ)
def invoice(request: HttpRequest, console: Console, invoice_id: int) -> HttpResponse:
    found = invoice_get(organization=console.organization, invoice_id=invoice_id)
    if found is None:
        return _page(request, console, "not_found.html", status=404)
    return _page(request, console, "invoice.html", invoice=found, organization=console.organization)


@require_GET
@console_page(scope=ORGANIZATION_WRITE)
def audit(request: HttpRequest, console: Console) -> HttpResponse:
    events = audit_event_list(organization=console.organization)[:200]
    return _page(request, console, "audit.html", events=events)
