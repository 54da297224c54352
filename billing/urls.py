from __future__ import annotations

from django.urls import path

from billing import apis, budget_apis, payment_apis

urlpatterns = [
    path("billing/invoices/", apis.InvoiceListApi.as_view(), name="billing-invoices"),
    path("billing/invoices/<int:invoice_id>/", apis.InvoiceDetailApi.as_view(), name="billing-invoice"),
    path("billing/current/", apis.CurrentPeriodApi.as_view(), name="billing-current"),
    path("billing/costs/", apis.UsageCostApi.as_view(), name="billing-costs"),
    path("billing/plans/", apis.PlanListApi.as_view(), name="billing-plans"),
    path("billing/subscription/", apis.SubscriptionChangeApi.as_view(), name="billing-subscription"),
    path("organization/budgets/", budget_apis.BudgetApi.as_view(), name="organization-budgets"),
    path("organization/alerts/", budget_apis.AlertSettingsApi.as_view(), name="organization-alerts"),
    path("signup/", apis.SignupApi.as_view(), name="signup"),
    path("billing/setup-intent/", payment_apis.SetupIntentApi.as_view(), name="billing-setup-intent"),
    path(
        "billing/payment-methods/",
        payment_apis.PaymentMethodListApi.as_view(),
        name="billing-payment-methods",
    ),
    path(
        "billing/payment-methods/<str:payment_method_id>/",
        payment_apis.PaymentMethodDetailApi.as_view(),
        name="billing-payment-method",
    ),
    path("billing/stripe/webhook/", apis.StripeWebhookApi.as_view(), name="billing-stripe-webhook"),
]
