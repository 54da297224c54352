from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.audit import actor_anonymous, actor_from_request
from accounts.context import AuthContext
from accounts.models import Organization
from accounts.scopes import BILLING_READ, BILLING_WRITE
from accounts.serializers import jwt_pair_for
from accounts.throttling import client_ip
from billing.models import Subscription
from billing.periods import today_utc
from billing.selectors import (
    invoice_estimate,
    invoice_get,
    invoice_list,
    plan_choice,
    plan_get_choosable,
    usage_cost_report,
)
from billing.serializers import (
    CostQuerySerializer,
    CostReportRowSerializer,
    CostRowSerializer,
    EstimateSerializer,
    InvoiceDetailSerializer,
    InvoiceSerializer,
    PendingPlanSerializer,
    PlanSerializer,
    PlanSummarySerializer,
    SignupInputSerializer,
    SignupSerializer,
    SubscriptionInputSerializer,
    SubscriptionSerializer,
)
from billing.services import stripe_webhook_receive, subscription_change
from billing.signup import (
    SignupFailed,
    signup_attempt,
    signup_check_enabled,
    signup_check_password,
    signup_create,
)
from common.errors import NotFound


def _organization(request: Request) -> Organization:
    # HasRequiredScope admitted the request, so authentication put an AuthContext on it.
    return cast(AuthContext, request.auth).organization


class InvoiceListApi(APIView):
    required_scope = BILLING_READ

    @extend_schema(
        tags=["billing"],
        operation_id="billing_invoices_list",
        responses=inline_serializer(
            "InvoiceList", {"object": serializers.CharField(), "data": InvoiceSerializer(many=True)}
        ),
        description="The caller's organization's issued invoices, newest period first.",
    )
    def get(self, request: Request) -> Response:
        invoices = invoice_list(organization=_organization(request))
        return Response({"object": "list", "data": InvoiceSerializer(invoices, many=True).data})


class InvoiceDetailApi(APIView):
    required_scope = BILLING_READ

    @extend_schema(
        tags=["billing"],
        responses={200: InvoiceDetailSerializer, 404: OpenApiResponse(description="Unknown invoice")},
        description="One issued invoice of the caller's organization, with its lines.",
    )
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = invoice_get(organization=_organization(request), invoice_id=invoice_id)
        if invoice is None:
            raise NotFound("No such invoice.", param="invoice_id")
        return Response(InvoiceDetailSerializer(invoice).data)


class CurrentPeriodApi(APIView):
    required_scope = BILLING_READ

    @extend_schema(
        tags=["billing"],
        responses=EstimateSerializer,
        description=(
            "An estimate of the open period's invoice: what it would be if the period closed now. "
            "Usage reaches it within seconds of each request."
        ),
    )
    def get(self, request: Request) -> Response:
        estimate = invoice_estimate(organization=_organization(request), now=timezone.now())
        subscription, pending, priced = estimate.subscription, estimate.pending, estimate.priced
        body: dict[str, Any] = {
            "object": "billing.estimate",
            "period": estimate.period.key,
            "period_start": estimate.period.start,
            "period_end": estimate.period.end,
            "as_of": estimate.as_of,
            "currency": priced.currency if priced is not None else settings.BILLING_CURRENCY,
            "plan": subscription.plan if subscription is not None else None,
            "pending_plan": (
                {"slug": pending.plan.slug, "name": pending.plan.name, "starts_on": pending.starts_on}
                if pending is not None
                else None
            ),
            "included_tokens": priced.included_tokens if priced is not None else 0,
            "tokens_used": priced.tokens_used if priced is not None else 0,
            "lines": priced.lines if priced is not None else [],
            "total": priced.total if priced is not None else Decimal("0.00"),
        }
        return Response(EstimateSerializer(body).data)


class UsageCostApi(APIView):
    required_scope = BILLING_READ

    @extend_schema(
        tags=["billing"],
        parameters=[CostQuerySerializer],
        responses=inline_serializer(
            "UsageCost",
            {
                "object": serializers.CharField(),
                "group_by": serializers.CharField(),
                "start": serializers.DateField(),
                "end": serializers.DateField(),
                "currency": serializers.CharField(),
                "data": CostReportRowSerializer(many=True),
            },
        ),
        description=(
            "Usage with its cost: each day's tokens at the prices of the plan in force that day, "
            "before the plan's included tokens (which the invoice applies per period). From `start` "
            "to `end`, by default the current month up to today (UTC)."
        ),
    )
    def get(self, request: Request) -> Response:
        query = CostQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        report = usage_cost_report(
            organization=_organization(request),
            start=params["start"],
            end=params["end"],
            group_by=params["group_by"],
        )
        rows = []
        for row in CostRowSerializer(report.rows, many=True).data:
            group = row.pop("group")
            rows.append({params["group_by"]: group, **row})
        return Response(
            {
                "object": "list",
                "group_by": params["group_by"],
                "start": params["start"],
                "end": params["end"],
                "currency": report.currency,
                "data": rows,
            }
        )


def _pending(subscription: Subscription | None) -> dict[str, Any] | None:
    if subscription is None:
        return None
    return {
        "slug": subscription.plan.slug,
        "name": subscription.plan.name,
        "starts_on": subscription.starts_on,
    }


class PlanListApi(APIView):
    required_scope = None

    @extend_schema(
        tags=["billing"],
        operation_id="billing_plans_list",
        responses=inline_serializer(
            "PlanList",
            {
                "object": serializers.CharField(),
                "data": PlanSerializer(many=True),
                "current_plan": PlanSummarySerializer(allow_null=True, help_text="The plan in force today."),
                "pending_plan": PendingPlanSerializer(
                    allow_null=True, help_text="The change that starts next period."
                ),
            },
        ),
        description=(
            "The plans the caller's organization may choose (POST billing/subscription/), with the "
            "plan it is on and any change waiting for the next period."
        ),
    )
    def get(self, request: Request) -> Response:
        choice = plan_choice(organization=_organization(request), day=today_utc(timezone.now()))
        current = choice.current.plan if choice.current is not None else None
        return Response(
            {
                "object": "list",
                "data": PlanSerializer(choice.plans, many=True).data,
                "current_plan": PlanSummarySerializer(current).data if current is not None else None,
                "pending_plan": _pending(choice.pending),
            }
        )


class SubscriptionChangeApi(APIView):
    required_scope = BILLING_WRITE

    @extend_schema(
        tags=["billing"],
        request=SubscriptionInputSerializer,
        responses={
            200: SubscriptionSerializer,
            400: OpenApiResponse(description="Invalid body, or a plan in another currency"),
            404: OpenApiResponse(description="No such plan (or one only an operator assigns)"),
        },
        description=(
            "Puts the organization on a plan: a first plan starts at once, a change at the start "
            "of the next period (the current period is billed on the current plan). Choosing the "
            "current plan again withdraws a pending change."
        ),
    )
    def post(self, request: Request) -> Response:
        data = SubscriptionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organization = _organization(request)
        now = timezone.now()
        plan = plan_get_choosable(
            organization=organization, slug=data.validated_data["plan"], day=today_utc(now)
        )
        if plan is None:
            raise NotFound("No such plan.", param="plan")
        held = subscription_change(
            organization=organization, plan=plan, now=now, actor=actor_from_request(request)
        )
        choice = plan_choice(organization=organization, day=today_utc(now))
        body = {
            "object": "billing.subscription",
            "plan": held.plan,
            "starts_on": held.starts_on,
            "current_plan": choice.current.plan if choice.current is not None else None,
            "pending_plan": _pending(choice.pending),
        }
        return Response(SubscriptionSerializer(body).data)


class SignupApi(APIView):
    """Public: creates the caller's organization and signs them in."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(
        tags=["auth"],
        operation_id="signup",
        request=SignupInputSerializer,
        responses={
            201: SignupSerializer,
            400: OpenApiResponse(
                description="Invalid body, a password the validators refuse, or `signup_failed`"
            ),
            404: OpenApiResponse(description="Sign-up is off on this server (SIGNUP_ENABLED)"),
            429: OpenApiResponse(description="Too many sign-ups from this address (Retry-After)"),
        },
        description=(
            "A new organization (its slug made from the name) on the server's default plan, with "
            "the caller as its owner, and a JWT pair acting for it. An email that already has an "
            "account signs up with that account's password; any other password answers "
            "`signup_failed`. Attempts are limited per client address."
        ),
    )
    def post(self, request: Request) -> Response:
        signup_check_enabled()
        attempt = signup_attempt(ip=client_ip(request))
        try:
            data = SignupInputSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            fields = data.validated_data
            signup_check_password(email=fields["email"], password=fields["password"])
            result = signup_create(
                email=fields["email"],
                password=fields["password"],
                organization_name=fields["organization_name"],
                actor=actor_anonymous(request, label=fields["email"]),
            )
        except SignupFailed:
            raise  # an account's password was tried: the attempt keeps its slot
        except Exception:
            attempt.release()
            raise
        organization, membership = result.organization, result.membership
        body = {
            "object": "signup",
            "organization": {"id": organization.pk, "slug": organization.slug, "name": organization.name},
            "user": {"id": membership.user.pk, "email": membership.user.email, "role": membership.role},
            "plan": result.subscription.plan if result.subscription is not None else None,
            **jwt_pair_for(membership=membership),
        }
        return Response(SignupSerializer(body).data, status=201)


class StripeWebhookApi(APIView):
    """Stripe's webhook deliveries. Public: the signature, not a credential, authenticates them."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(
        tags=["billing"],
        parameters=[
            OpenApiParameter(
                "Stripe-Signature",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                required=True,
                description="Stripe's signature of the body with the endpoint's signing secret.",
            )
        ],
        request={
            "application/json": {"type": "object", "description": "A Stripe event, as Stripe sends it."}
        },
        responses=inline_serializer(
            "StripeWebhookReceipt",
            {
                "received": serializers.BooleanField(),
                "duplicate": serializers.BooleanField(),
                "outcome": serializers.CharField(),
            },
        ),
        description="Verified with the signing secret; an event is applied once, even when delivered twice.",
    )
    def post(self, request: Request) -> Response:
        outcome = stripe_webhook_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
        return Response({"received": True, "duplicate": outcome.duplicate, "outcome": outcome.outcome})
