from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from accounts.models import Organization
from usage.models import BudgetEvent, UsageDaily, UsageDeadLetter, UsageRecord
from usage.records import dead_letters_retry
from usage.selectors import tokens_per_day, usage_report


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "organization",
        "endpoint",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "status",
        "request_id",
        "reservation_id",
    )
    list_filter = ("status", "endpoint", "model")
    search_fields = ("request_id", "reservation_id", "organization__slug", "end_user")
    date_hierarchy = "created_at"
    list_select_related = ("organization",)
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageDeadLetter)
class UsageDeadLetterAdmin(admin.ModelAdmin):
    """Settlement entries the flush set aside. Fix the cause, then retry them."""

    list_display = ("created_at", "stream", "entry_id", "error")
    list_filter = ("stream",)
    readonly_fields = ("created_at", "stream", "entry_id", "payload", "error")
    actions = ("retry",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Write the selected entries again")
    def retry(self, request: HttpRequest, queryset: Any) -> None:
        landed, failing = dead_letters_retry(dead_letters=list(queryset))
        self.message_user(request, f"{landed} entries written, {failing} still failing.")


@admin.register(UsageDaily)
class UsageDailyAdmin(admin.ModelAdmin):
    list_display = (
        "day",
        "organization",
        "model",
        "endpoint",
        "requests",
        "prompt_tokens",
        "completion_tokens",
    )
    list_filter = ("day", "model")
    search_fields = ("organization__slug",)

    def get_urls(self) -> list[Any]:
        custom = [
            path(
                "organization/<int:organization_id>/",
                self.admin_site.admin_view(self.organization_usage),
                name="usage_organization",
            )
        ]
        return custom + super().get_urls()

    def organization_usage(self, request: HttpRequest, organization_id: int) -> HttpResponse:
        organization = get_object_or_404(Organization, pk=organization_id)
        end = timezone.now().date()
        start = end - timedelta(days=29)
        series = tokens_per_day(organization=organization, start=start, end=end)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Usage of {organization.name}",
            "organization": organization,
            "chart": json.dumps(
                {"labels": [d.isoformat() for d, _ in series], "tokens": [t for _, t in series]}
            ),
            "by_model": usage_report(organization=organization, start=start, end=end, group_by="model"),
            "start": start,
            "end": end,
        }
        return TemplateResponse(request, "admin/usage/organization_usage.html", context)


@admin.register(BudgetEvent)
class BudgetEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "organization", "kind", "budget", "period", "used", "limit")
    list_filter = ("kind",)
    search_fields = ("organization__slug", "budget")
