from __future__ import annotations

from rest_framework import serializers

from webhooks.models import EVENT_TYPES, WebhookEndpoint


class EndpointCreateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2000)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPES), min_length=1, max_length=len(EVENT_TYPES)
    )
    description = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)


class EndpointSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    object = serializers.SerializerMethodField()
    url = serializers.CharField()
    events = serializers.ListField(child=serializers.CharField())
    description = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_object(self, endpoint: WebhookEndpoint) -> str:
        return "webhook_endpoint"


class CreatedEndpointSerializer(EndpointSerializer):
    secret = serializers.CharField(
        help_text="Signs every delivery (Webhook-Signature); shown this once and never again."
    )


class DeliverySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    event_id = serializers.CharField()
    event_type = serializers.CharField()
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)
