from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.audit import actor_from_request
from accounts.context import auth_context
from accounts.scopes import ORGANIZATION_READ, ORGANIZATION_WRITE
from webhooks import services
from webhooks.serializers import (
    CreatedEndpointSerializer,
    DeliverySerializer,
    EndpointCreateSerializer,
    EndpointSerializer,
)

_NOT_FOUND = {404: OpenApiResponse(description="No such endpoint in your organization")}


class EndpointListApi(APIView):
    @property
    def required_scope(self) -> str:
        return ORGANIZATION_READ if self.request.method == "GET" else ORGANIZATION_WRITE

    @extend_schema(
        tags=["organization"],
        operation_id="organization_webhooks_list",
        responses=inline_serializer(
            "WebhookEndpointList", {"object": serializers.CharField(), "data": EndpointSerializer(many=True)}
        ),
    )
    def get(self, request: Request) -> Response:
        endpoints = services.endpoint_list(organization=auth_context(request).organization)
        return Response({"object": "list", "data": EndpointSerializer(endpoints, many=True).data})

    @extend_schema(
        tags=["organization"],
        operation_id="organization_webhooks_create",
        request=EndpointCreateSerializer,
        responses={201: CreatedEndpointSerializer},
        description=(
            "An address that receives the chosen events as signed JSON POSTs "
            "(`Webhook-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of '<t>.<body>'>`). "
            "An address that is not public is refused; the secret is in this answer only."
        ),
    )
    def post(self, request: Request) -> Response:
        data = EndpointCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields: dict[str, Any] = data.validated_data
        endpoint, secret = services.endpoint_create(
            organization=auth_context(request).organization,
            actor=actor_from_request(request),
            url=fields["url"],
            events=fields["events"],
            description=fields["description"],
        )
        body = dict(EndpointSerializer(endpoint).data)
        body["secret"] = secret
        return Response(body, status=201)


class EndpointDetailApi(APIView):
    required_scope = ORGANIZATION_WRITE

    @extend_schema(tags=["organization"], responses={204: None, **_NOT_FOUND})
    def delete(self, request: Request, endpoint_id: int) -> Response:
        organization = auth_context(request).organization
        endpoint = services.endpoint_get(organization=organization, endpoint_id=endpoint_id)
        services.endpoint_delete(
            organization=organization, actor=actor_from_request(request), endpoint=endpoint
        )
        return Response(status=204)


class DeliveryListApi(APIView):
    required_scope = ORGANIZATION_READ

    @extend_schema(
        tags=["organization"],
        responses={
            200: inline_serializer(
                "WebhookDeliveryList",
                {
                    "count": serializers.IntegerField(),
                    "next": serializers.CharField(allow_null=True),
                    "previous": serializers.CharField(allow_null=True),
                    "results": DeliverySerializer(many=True),
                },
            ),
            **_NOT_FOUND,
        },
        description="The endpoint's deliveries, newest first, each with its last status.",
    )
    def get(self, request: Request, endpoint_id: int) -> Response:
        endpoint = services.endpoint_get(
            organization=auth_context(request).organization, endpoint_id=endpoint_id
        )
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(services.delivery_list(endpoint=endpoint), request, view=self)
        return paginator.get_paginated_response(DeliverySerializer(page, many=True).data)
