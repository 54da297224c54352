"""`/api/v1/organization/budgets/`: the organization's budgets and limits within its plan."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.audit import actor_from_request
from accounts.context import auth_context
from accounts.scopes import ORGANIZATION_READ, ORGANIZATION_WRITE
from billing import alerts
from billing.budgets import RATE_LIMITS, budget_overview, budget_update
from billing.serializers import BudgetEntrySerializer, BudgetInputSerializer, BudgetOverviewSerializer


class BudgetApi(APIView):
    @property
    def required_scope(self) -> str:
        return ORGANIZATION_READ if self.request.method == "GET" else ORGANIZATION_WRITE

    @extend_schema(
        tags=["organization"],
        operation_id="organization_budgets_list",
        responses=BudgetOverviewSerializer,
        description=(
            "The organization's limits, what its plan grants, and the budgets of each member, each "
            "key in use and each end user with one. Needs organization:read."
        ),
    )
    def get(self, request: Request) -> Response:
        overview = budget_overview(organization=auth_context(request).organization)
        return Response(BudgetOverviewSerializer(overview).data)

    @extend_schema(
        tags=["organization"],
        operation_id="organization_budgets_update",
        request=BudgetInputSerializer,
        responses={
            200: BudgetEntrySerializer,
            400: OpenApiResponse(
                description="Invalid body, a field the target does not take, or more than the plan grants "
                "(`above_plan`, naming the field)"
            ),
            404: OpenApiResponse(description="No such member or key in the organization"),
        },
        description=(
            "Sets one budget: the organization's (`token_budget` is its quota; rate limits), a "
            "member's (`id`: the membership), a key's (`id`; budget and rate limits), or an end "
            "user's (`end_user`; left out: every end user's default). Fields left out stay as they "
            "are; null removes a limit. Never above what the plan grants. Needs organization:write."
        ),
    )
    def put(self, request: Request) -> Response:
        data = BudgetInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        organization, actor = auth_context(request).organization, actor_from_request(request)
        with transaction.atomic():
            entry = budget_update(
                organization=organization,
                actor=actor,
                target=fields["target"],
                target_id=fields.get("id"),
                end_user=fields.get("end_user"),
                token_budget=fields["token_budget"],
                budget_period=fields.get("budget_period"),
                rate_limits={name: fields[name] for name in RATE_LIMITS if name in fields},
            )
            if "alert_thresholds" in fields:
                alerts.budget_alert_thresholds_set(
                    organization=organization,
                    actor=actor,
                    target=fields["target"],
                    target_id=entry.id,
                    end_user=fields.get("end_user"),
                    thresholds=fields["alert_thresholds"],
                )
        return Response(BudgetEntrySerializer(entry).data)


# An amount of money with at most two decimals, as a string (the schema states the pattern).
AMOUNT = RegexValidator(
    r"^([1-9][0-9]{0,11}(\.[0-9]{1,2})?|0\.(0[1-9]|[1-9][0-9]?))$",
    message="A positive amount such as 50 or 12.50.",
)


class AlertSettingsSerializer(serializers.Serializer):
    alert_thresholds = serializers.ListField(
        child=serializers.FloatField(min_value=0.01, max_value=1.0),
        min_length=1,
        max_length=10,
        required=False,
        help_text="Fractions of each budget that send an alert (every budget without its own).",
    )
    cost_alert_amounts = serializers.ListField(
        child=serializers.CharField(validators=[AMOUNT], max_length=15),
        max_length=10,
        required=False,
        help_text="Amounts of this period's cost, in the plan's currency, that send an alert.",
    )


class AlertSentSerializer(serializers.Serializer):
    kind = serializers.CharField()
    budget = serializers.CharField()
    period = serializers.CharField()
    threshold = serializers.CharField()
    used = serializers.DecimalField(max_digits=20, decimal_places=2)
    limit = serializers.DecimalField(max_digits=20, decimal_places=2)
    created_at = serializers.DateTimeField()


class AlertSettingsApi(APIView):
    @property
    def required_scope(self) -> str:
        return ORGANIZATION_READ if self.request.method == "GET" else ORGANIZATION_WRITE

    def _body(self, organization: Any) -> dict[str, Any]:
        return {
            "alert_thresholds": organization.alert_thresholds,
            "cost_alert_amounts": organization.cost_alert_amounts,
            "sent": AlertSentSerializer(
                alerts.spend_alert_list(organization=organization)[:50], many=True
            ).data,
        }

    @extend_schema(
        tags=["organization"],
        operation_id="organization_alerts_get",
        responses=inline_serializer(
            "AlertSettings",
            {
                "alert_thresholds": serializers.ListField(child=serializers.FloatField()),
                "cost_alert_amounts": serializers.ListField(child=serializers.CharField()),
                "sent": AlertSentSerializer(many=True),
            },
        ),
        description="The spend alerts' thresholds and the latest alerts sent (each once per period).",
    )
    def get(self, request: Request) -> Response:
        return Response(self._body(auth_context(request).organization))

    @extend_schema(
        tags=["organization"],
        operation_id="organization_alerts_update",
        request=AlertSettingsSerializer,
        responses=inline_serializer(
            "AlertSettingsUpdated",
            {
                "alert_thresholds": serializers.ListField(child=serializers.FloatField()),
                "cost_alert_amounts": serializers.ListField(child=serializers.CharField()),
                "sent": AlertSentSerializer(many=True),
            },
        ),
    )
    def put(self, request: Request) -> Response:
        data = AlertSettingsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organization = alerts.alert_settings_update(
            organization=auth_context(request).organization,
            actor=actor_from_request(request),
            alert_thresholds=data.validated_data.get("alert_thresholds"),
            cost_alert_amounts=data.validated_data.get("cost_alert_amounts"),
        )
        return Response(self._body(organization))
