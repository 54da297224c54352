from __future__ import annotations

from rest_framework import serializers

from inference.serializers import GenerateInputSerializer, GenerateOutputSerializer
from knowledge.models import Document


class DocumentOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Document
        fields = (
            "id",
            "title",
            "filename",
            "format",
            "size_bytes",
            "status",
            "error",
            "chunks_total",
            "chunks_embedded",
            "attempts",
            "created_at",
            "updated_at",
            "indexed_at",
        )


class DocumentTextInputSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=300)
    text = serializers.CharField(trim_whitespace=False)


class SearchInputSerializer(serializers.Serializer):
    query = serializers.CharField()
    top_k = serializers.IntegerField(min_value=1, max_value=50, default=5)
    document_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, max_length=1000
    )
    min_score = serializers.FloatField(min_value=-1.0, max_value=1.0, required=False)


class SourceSerializer(serializers.Serializer):
    document_id = serializers.IntegerField()
    title = serializers.CharField()
    chunk_id = serializers.IntegerField()
    position = serializers.IntegerField()
    score = serializers.FloatField()
    text = serializers.CharField()


class RagInputSerializer(GenerateInputSerializer):
    top_k = serializers.IntegerField(min_value=1, max_value=20, default=4)
    document_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, max_length=1000
    )


class RagOutputSerializer(GenerateOutputSerializer):
    sources = SourceSerializer(many=True)
    note = serializers.CharField(required=False)
