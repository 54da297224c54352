from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from accounts.apis import OAuthTokenApi
from common import apis as common_apis
from console import auth_views as console_sign

api_v1 = [
    path("", include("accounts.urls")),
    path("", include("usage.urls")),
    path("", include("inference.urls")),
    path("", include("knowledge.urls")),
    path("", include("billing.urls")),
    path("", include("webhooks.urls")),
]

urlpatterns = [
    path("", console_sign.landing, name="landing"),
    path("console/", include("console.urls")),
    path("api/v1/", include(api_v1)),
    path("v1/", include("inference.openai_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("swagger/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("oauth/token/", OAuthTokenApi.as_view(), name="oauth-token"),  # throttled sign-in
    path("oauth/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("admin/", admin.site.urls),
    path("healthz", common_apis.healthz, name="healthz"),
    path("readyz", common_apis.readyz, name="readyz"),
    path("metrics", common_apis.metrics, name="metrics"),
]

handler400 = "common.errors.handler400"
handler404 = "common.errors.handler404"
handler500 = "common.errors.handler500"
