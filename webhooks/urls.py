from __future__ import annotations

from django.urls import path

from webhooks import apis

urlpatterns = [
    path("organization/webhooks/", apis.EndpointListApi.as_view(), name="organization-webhooks"),
    path(
        "organization/webhooks/<int:endpoint_id>/",
        apis.EndpointDetailApi.as_view(),
        name="organization-webhook",
    ),
    path(
        "organization/webhooks/<int:endpoint_id>/deliveries/",
        apis.DeliveryListApi.as_view(),
        name="organization-webhook-deliveries",
    ),
]
