from __future__ import annotations

from datetime import UTC, timedelta

from django.utils import timezone
from rest_framework import serializers

from usage.admission import END_USER_MAX_CHARS
from usage.selectors import GROUPS

MAX_REPORT_DAYS = 366


class DateRangeSerializer(serializers.Serializer):
    """`start` and `end` days (UTC) of a report, inclusive, at most a year apart. Left out, they
    are the current period (the calendar month, as budgets and invoices count it) up to today."""

    start = serializers.DateField(required=False, help_text="Default: the first day of `end`'s month (UTC).")
    end = serializers.DateField(
        required=False,
        help_text=(
            "On or after `start`, at most 366 days after it. Default: today (UTC), or `start` if "
            "later, or 366 days after `start` if sooner."
        ),
    )

    def validate(self, attrs: dict) -> dict:
        if "end" not in attrs:
            today = timezone.now().astimezone(UTC).date()
            start = attrs.get("start", today)
            # Today, within what one report may cover after `start`.
            attrs["end"] = start if start > today else min(today, start + timedelta(days=MAX_REPORT_DAYS))
        attrs.setdefault("start", attrs["end"].replace(day=1))
        if attrs["end"] < attrs["start"]:
            raise serializers.ValidationError({"end": "end is before start."})
        if (attrs["end"] - attrs["start"]).days > MAX_REPORT_DAYS:
            raise serializers.ValidationError({"end": "A report covers at most 366 days."})
        return attrs


class UsageQuerySerializer(DateRangeSerializer):
    group_by = serializers.ChoiceField(choices=sorted(GROUPS), default="day")
    split_by = serializers.ChoiceField(
        choices=sorted(GROUPS),
        required=False,
        help_text="A second grouping within each group: `group_by=day&split_by=model` gives each day's tokens per model.",
    )
    format = serializers.ChoiceField(choices=["json", "csv"], default="json")


class MeQuerySerializer(serializers.Serializer):
    end_user = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=END_USER_MAX_CHARS,
        help_text="Also show this end user's budget (the `user_id` or `user` of a request).",
    )


class UsageRowSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
