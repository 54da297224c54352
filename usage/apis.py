from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.context import auth_context
from accounts.scopes import USAGE_READ
from accounts.serializers import MeOutputSerializer
from usage.selectors import usage_report, usage_report_csv
from usage.serializers import MeQuerySerializer, UsageQuerySerializer, UsageRowSerializer
from usage.services import budget_views


class MeApi(APIView):
    """Who the caller is, and every limit and budget that applies to it."""

    required_scope = None

    @extend_schema(tags=["account"], parameters=[MeQuerySerializer], responses=MeOutputSerializer)
    def get(self, request: Request) -> Response:
        query = MeQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        context = auth_context(request)
        org, key, user = context.organization, context.api_key, context.user
        limits = {
            "organization": {
                "requests_per_minute": org.requests_per_minute,
                "tokens_per_minute": org.tokens_per_minute,
            }
        }
        if key is not None:
            limits["api_key"] = {
                "requests_per_minute": key.requests_per_minute,
                "tokens_per_minute": key.tokens_per_minute,
            }
        end_user = query.validated_data.get("end_user") or None
        body = {
            "organization": {"id": org.pk, "slug": org.slug, "name": org.name, "status": org.status},
            "user": (
                {
                    "id": user.pk,
                    "email": user.email,
                    "role": context.membership.role if context.membership else None,
                }
                if user is not None
                else None
            ),
            "api_key": (
                {"name": key.name, "prefix": key.prefix, "expires_at": key.expires_at}
                if key is not None
                else None
            ),
            "auth_method": context.method,
            "scopes": sorted(context.scopes),
            "limits": limits,
            "budgets": [vars(view) for view in budget_views(context=context, end_user=end_user)],
        }
        return Response(MeOutputSerializer(body).data)


class UsageReportApi(APIView):
    required_scope = USAGE_READ

    @extend_schema(
        tags=["usage"],
        parameters=[UsageQuerySerializer],
        responses={
            (200, "application/json"): inline_serializer(
                "UsageReport",
                {
                    "object": serializers.CharField(),
                    "group_by": serializers.CharField(),
                    "start": serializers.DateField(),
                    "end": serializers.DateField(),
                    "data": UsageRowSerializer(many=True),
                },
            ),
            (200, "text/csv"): OpenApiTypes.STR,
        },
        description=(
            "Usage of the caller's organization, one row per group, from `start` to `end` (by default "
            "the current month up to today, UTC). `format=csv` answers CSV."
        ),
    )
    def get(self, request: Request) -> Response | HttpResponse:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        context = auth_context(request)
        rows = usage_report(
            organization=context.organization,
            start=params["start"],
            end=params["end"],
            group_by=params["group_by"],
            split_by=params.get("split_by"),
        )
        if params["format"] == "csv":
            body = usage_report_csv(rows=rows, group_by=params["group_by"], split_by=params.get("split_by"))
            response = HttpResponse(body, content_type="text/csv")
            response["Content-Disposition"] = (
                f'attachment; filename="usage-{context.organization.slug}-{params["start"]}-{params["end"]}.csv"'
            )
            return response
        return Response(
            {
                "object": "list",
                "group_by": params["group_by"],
                "start": params["start"],
                "end": params["end"],
                "data": rows,
            }
        )
