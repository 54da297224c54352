from __future__ import annotations

from django.urls import path

from usage import apis

urlpatterns = [
    path("me/", apis.MeApi.as_view(), name="me"),
    path("usage/", apis.UsageReportApi.as_view(), name="usage-report"),
]
