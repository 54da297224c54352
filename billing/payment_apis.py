"""A tenant's cards (Stripe SetupIntents and payment methods): see billing.payments."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.audit import actor_from_request
from accounts.context import auth_context
from accounts.scopes import BILLING_READ, BILLING_WRITE
from billing import payments


class SetupIntentOutputSerializer(serializers.Serializer):
    setup_intent = serializers.CharField()
    client_secret = serializers.CharField(help_text="For Stripe.js's confirmCardSetup, in the browser.")
    publishable_key = serializers.CharField()
    stripe_js_url = serializers.CharField()


class CardSerializer(serializers.Serializer):
    id = serializers.CharField()
    brand = serializers.CharField()
    last4 = serializers.CharField()
    exp_month = serializers.IntegerField()
    exp_year = serializers.IntegerField()
    default = serializers.BooleanField()


class SetDefaultSerializer(serializers.Serializer):
    setup_intent = serializers.CharField(max_length=255, help_text="The SetupIntent the browser confirmed.")


_UNAVAILABLE = {404: OpenApiResponse(description="Card payments are not available (no STRIPE_API_KEY)")}


class SetupIntentApi(APIView):
    required_scope = BILLING_WRITE

    @extend_schema(
        tags=["billing"],
        request=None,
        responses={201: SetupIntentOutputSerializer, **_UNAVAILABLE},
        description="Opens a SetupIntent for your organization: confirm it with the card in the browser "
        "(Stripe.js), then POST it to billing/payment-methods/ to make the card your default.",
    )
    def post(self, request: Request) -> Response:
        started = payments.setup_intent_create(
            organization=auth_context(request).organization, actor=actor_from_request(request)
        )
        return Response(SetupIntentOutputSerializer(started).data, status=201)


class PaymentMethodListApi(APIView):
    @property
    def required_scope(self) -> str:
        return BILLING_READ if self.request.method == "GET" else BILLING_WRITE

    @extend_schema(
        tags=["billing"],
        operation_id="billing_payment_methods_list",
        responses=inline_serializer(
            "PaymentMethodList", {"object": serializers.CharField(), "data": CardSerializer(many=True)}
        ),
    )
    def get(self, request: Request) -> Response:
        cards = payments.payment_methods_list(organization=auth_context(request).organization)
        return Response({"object": "list", "data": CardSerializer(cards, many=True).data})

    @extend_schema(
        tags=["billing"],
        operation_id="billing_payment_methods_set_default",
        request=SetDefaultSerializer,
        responses={
            200: CardSerializer,
            404: OpenApiResponse(description="No such setup intent, or card payments are not available"),
        },
        description="Makes the card of a confirmed SetupIntent your default; open invoices are charged on it.",
    )
    def post(self, request: Request) -> Response:
        data = SetDefaultSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        card = payments.payment_method_set_default(
            organization=auth_context(request).organization,
            actor=actor_from_request(request),
            setup_intent_id=data.validated_data["setup_intent"],
        )
        return Response(CardSerializer(card).data)


class PaymentMethodDetailApi(APIView):
    required_scope = BILLING_WRITE

    @extend_schema(
        tags=["billing"],
        responses={
            204: None,
            404: OpenApiResponse(description="No such card, or card payments are not available"),
        },
    )
    def delete(self, request: Request, payment_method_id: str) -> Response:
        payments.payment_method_remove(
            organization=auth_context(request).organization,
            actor=actor_from_request(request),
            payment_method_id=payment_method_id,
        )
        return Response(status=204)
