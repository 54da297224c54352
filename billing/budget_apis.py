"""`/api/v1/organization/budgets/`: the organization's budgets and limits within its plan."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.audit import actor_from_request
from accounts.context import auth_context
from accounts.scopes import ORGANIZATION_READ, ORGANIZATION_WRITE
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
        entry = budget_update(
            organization=auth_context(request).organization,
            actor=actor_from_request(request),
            target=fields["target"],
            target_id=fields.get("id"),
            end_user=fields.get("end_user"),
            token_budget=fields["token_budget"],
            budget_period=fields.get("budget_period"),
            rate_limits={name: fields[name] for name in RATE_LIMITS if name in fields},
        )
        return Response(BudgetEntrySerializer(entry).data)
