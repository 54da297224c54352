from __future__ import annotations

from rest_framework import serializers

from usage.admission import END_USER_MAX_CHARS
from usage.selectors import GROUPS


class DateRangeSerializer(serializers.Serializer):
    """`start` and `end` days of a report, inclusive, at most a year apart."""

    start = serializers.DateField()
    end = serializers.DateField(help_text="On or after `start`, at most 366 days after it.")

    def validate(self, attrs: dict) -> dict:
        if attrs["end"] < attrs["start"]:
            raise serializers.ValidationError({"end": "end is before start."})
        if (attrs["end"] - attrs["start"]).days > 366:
            raise serializers.ValidationError({"end": "A report covers at most 366 days."})
        return attrs


class UsageQuerySerializer(DateRangeSerializer):
    group_by = serializers.ChoiceField(choices=sorted(GROUPS), default="day")
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
