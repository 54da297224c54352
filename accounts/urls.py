from __future__ import annotations

from django.urls import path

from accounts import apis

urlpatterns = [
    path("auth/token/", apis.TokenObtainApi.as_view(), name="auth-token"),
    path("auth/token/refresh/", apis.TokenRefreshApi.as_view(), name="auth-token-refresh"),
]
