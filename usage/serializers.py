from __future__ import annotations

from rest_framework import serializers

from usage.selectors import GROUPS


class UsageQuerySerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    group_by = serializers.ChoiceField(choices=sorted(GROUPS), default="day")
    format = serializers.ChoiceField(choices=["json", "csv"], default="json")

    def validate(self, attrs: dict) -> dict:
        if attrs["end"] < attrs["start"]:
            raise serializers.ValidationError({"end": "end is before start."})
        if (attrs["end"] - attrs["start"]).days > 366:
            raise serializers.ValidationError({"end": "A report covers at most 366 days."})
        return attrs


class UsageRowSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
