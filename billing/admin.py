from __future__ import annotations

from typing import Any

import stripe
from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from accounts.audit import actor_operator
from accounts.models import Organization
from billing import services
from billing.models import Invoice, InvoiceLine, Plan, PlanModelPrice, StripeEvent, Subscription
from billing.periods import Period, today_utc
from billing.selectors import plan_is_in_use

_PRICE_FIELDS = (
    "currency",
    "monthly_price",
    "included_tokens",
    "prompt_price_per_1k",
    "completion_price_per_1k",
)


class PlanModelPriceInline(admin.TabularInline):
    model = PlanModelPrice
    extra = 0
    fields = ("model", "prompt_price_per_1k", "completion_price_per_1k")

    def _frozen(self, obj: Plan | None) -> bool:
        return obj is not None and plan_is_in_use(plan=obj)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._frozen(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._frozen(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._frozen(obj) and super().has_delete_permission(request, obj)


_LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "token_quota",
    "search_requests_per_minute",
    "ingestion_token_quota",
    "allowed_models",
)


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "slug",
        "public",
        "currency",
        "monthly_price",
        "included_tokens",
        "prompt_price_per_1k",
        "completion_price_per_1k",
        "requests_per_minute",
        "tokens_per_minute",
        "token_quota",
    )
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = (PlanModelPriceInline,)
    fieldsets = (
        (None, {"fields": ("name", "slug", "public")}),
        ("Prices (frozen once an organization has been on the plan)", {"fields": _PRICE_FIELDS}),
        ("Limits", {"fields": _LIMIT_FIELDS}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Plan | None = None) -> tuple[str, ...]:
        if obj is not None and plan_is_in_use(plan=obj):
            return _PRICE_FIELDS
        return ()

    def save_model(self, request: HttpRequest, obj: Plan, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and set(_LIMIT_FIELDS) & set(form.changed_data):
            count = services.plan_limits_apply(plan=obj, actor=actor_operator(request))
            self.message_user(request, f"Applied the new limits to {count} organization(s) on {obj.name}.")


class SubscriptionForm(forms.ModelForm):
    class Meta:
        model = Subscription
        fields = ("organization", "plan")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("organization") and cleaned.get("plan"):
            try:
                services.subscription_change_check(organization=cleaned["organization"], plan=cleaned["plan"])
            except services.BillingError as exc:
                raise forms.ValidationError(exc.message) from exc
        return cleaned


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    """Adding a subscription goes through `subscription_change`: the first plan starts today,
    later ones at the next period."""

    list_display = ("organization", "plan", "starts_on", "limits_applied_at", "created_at")
    list_filter = ("plan",)
    search_fields = ("organization__slug", "plan__slug")
    autocomplete_fields = ("organization",)
    fields = ("organization", "plan", "starts_on", "limits_applied_at")
    readonly_fields = ("starts_on", "limits_applied_at")
    actions = ("build_previous_month",)

    def has_change_permission(self, request: HttpRequest, obj: Subscription | None = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Subscription | None = None) -> bool:
        # The past is the price history of billed usage; only a pending change can be withdrawn.
        return (
            obj is not None
            and obj.starts_on > today_utc(timezone.now())
            and super().has_delete_permission(request, obj)
        )

    form = SubscriptionForm

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        held = services.subscription_change(
            organization=obj.organization, plan=obj.plan, actor=actor_operator(request)
        )
        obj.pk, obj.plan, obj.starts_on = held.pk, held.plan, held.starts_on
        obj.limits_applied_at, obj.created_at = held.limits_applied_at, held.created_at

    def delete_model(self, request: HttpRequest, obj: Subscription) -> None:
        services.subscription_pending_cancel(subscription=obj, actor=actor_operator(request))

    @admin.action(description="Build last month's invoice (draft) for the selected organizations")
    def build_previous_month(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        period = Period.containing(timezone.now()).previous()
        built = 0
        for organization in Organization.objects.filter(pk__in=queryset.values("organization_id")):
            built += len(services.period_bill(period=period, organization=organization, send=False).invoices)
        self.message_user(request, f"Built {built} invoice(s) for {period}.")


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = (
        "position",
        "description",
        "tokens",
        "included_tokens",
        "billable_tokens",
        "unit_price",
        "amount",
        "stripe_invoice_item_id",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = (
        "organization",
        "period_start",
        "plan",
        "status",
        "total",
        "currency",
        "payment_failures",
        "past_due_since",
        "stripe_invoice_id",
    )
    list_filter = ("status", "period_start")
    search_fields = ("organization__slug", "stripe_invoice_id")
    list_select_related = ("organization", "plan")
    inlines = (InvoiceLineInline,)
    actions = ("rebuild", "send", "mark_paid")
    readonly_fields = (
        "organization",
        "period_start",
        "period_end",
        "plan",
        "currency",
        "status",
        "total",
        "tokens_used",
        "included_tokens",
        "built_at",
        "finalized_at",
        "paid_at",
        "payment_failures",
        "past_due_since",
        "stripe_invoice_id",
        "stripe_synced_at",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # invoices are built from usage (the bill command, the beat task, the actions)

    @admin.action(description="Rebuild the selected drafts from usage")
    def rebuild(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        drafts = queryset.filter(status=Invoice.Status.DRAFT).select_related("organization")
        for invoice in drafts:
            services.invoice_build(organization=invoice.organization, period=invoice.period)
        self.message_user(request, f"Rebuilt {drafts.count()} draft(s); finalized invoices never change.")

    @admin.action(description="Send the selected invoices (finalize, push to Stripe)")
    def send(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        sent = 0
        for invoice in queryset.select_related("organization", "plan"):
            try:
                services.invoice_send(invoice=invoice)
            except stripe.StripeError as exc:
                self.message_user(request, f"{invoice}: Stripe refused it: {exc}", level=messages.ERROR)
                continue
            sent += 1
        self.message_user(request, f"Sent {sent} invoice(s).")

    @admin.action(description="Mark the selected invoices paid (paid outside Stripe)")
    def mark_paid(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        paid = 0
        for invoice in queryset.select_related("organization"):
            try:
                services.invoice_mark_paid(invoice=invoice)
            except (services.BillingError, stripe.StripeError) as exc:
                self.message_user(request, f"{invoice}: {exc}", level=messages.ERROR)
                continue
            paid += 1
        self.message_user(request, f"Marked {paid} invoice(s) paid.")


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ("received_at", "type", "event_id", "invoice", "outcome")
    list_filter = ("type",)
    search_fields = ("event_id",)
    readonly_fields = ("event_id", "type", "invoice", "outcome", "received_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
