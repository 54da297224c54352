from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.validators import NON_BLANK
from inference.serializers import GenerateInputSerializer, GenerateOutputSerializer
from knowledge.models import Document
from knowledge.services import SEARCH_MODES


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


class DocumentUploadOutputSerializer(DocumentOutputSerializer):
    duplicate = serializers.BooleanField(
        help_text="The same content was uploaded before: this is that document."
    )

    class Meta:
        model = Document
        fields = (*DocumentOutputSerializer.Meta.fields, "duplicate")


@extend_schema_field({"type": "string", "format": "binary", "minLength": 1})
class DocumentFileField(serializers.FileField):
    """A document's bytes, at least one (the service says so: DRF's check would answer first)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_empty_file", True)
        super().__init__(**kwargs)


class DocumentUploadSerializer(serializers.Serializer):
    """A multipart upload. The service checks the file (its size before it is read, then its
    format); this checks the title as any text field is (no NUL, which PostgreSQL cannot hold)."""

    file = DocumentFileField()
    title = serializers.CharField(required=False, allow_blank=True)


class DocumentTextInputSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=300, validators=[NON_BLANK])
    text = serializers.CharField(trim_whitespace=False)


# The largest primary key the database holds (bigint): a larger id would overflow the query.
BIGINT_MAX = 2**63 - 1


class DocumentIdsField(serializers.ListField):
    """Ids of the caller's documents, at most KNOWLEDGE_MAX_DOCUMENT_IDS. The length is checked
    before any id is validated, so a long list is refused before it costs its items' work."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("child", serializers.IntegerField(min_value=1, max_value=BIGINT_MAX))
        kwargs.setdefault("max_length", settings.KNOWLEDGE_MAX_DOCUMENT_IDS)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[Any]:
        if self.max_length is not None and isinstance(data, list) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class SearchModeField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("choices", SEARCH_MODES)
        kwargs.setdefault("default", "hybrid")
        kwargs.setdefault(
            "help_text",
            "`vector`: by meaning; `keyword`: by the words the passage shares with the query (names, "
            "identifiers, error codes match whole); `hybrid`: both, fused by reciprocal rank.",
        )
        super().__init__(**kwargs)


class SearchInputSerializer(serializers.Serializer):
    query = serializers.CharField(max_length=settings.KNOWLEDGE_MAX_QUERY_CHARS, validators=[NON_BLANK])
    top_k = serializers.IntegerField(min_value=1, max_value=50, default=5)
    document_ids = DocumentIdsField(required=False)
    min_score = serializers.FloatField(
        min_value=-1.0,
        max_value=1.0,
        required=False,
        help_text="The least cosine similarity between the query and a passage, in every mode.",
    )
    mode = SearchModeField()


class SourceSerializer(serializers.Serializer):
    document_id = serializers.IntegerField()
    title = serializers.CharField()
    chunk_id = serializers.IntegerField()
    position = serializers.IntegerField()
    score = serializers.FloatField()
    text = serializers.CharField()


class RagSourceSerializer(SourceSerializer):
    """A source the prompt held: a search hit whose `text` is what the prompt held of it."""

    used_tokens = serializers.IntegerField(help_text="Tokens it takes of the prompt, in the model's count.")
    trimmed = serializers.BooleanField(help_text="Cut at a sentence boundary to fit the context.")

    def to_representation(self, instance: Any) -> dict[str, Any]:
        return {
            **SourceSerializer(instance.hit).data,
            "used_tokens": instance.used_tokens,
            "trimmed": instance.trimmed,
        }


class RagInputSerializer(GenerateInputSerializer):
    top_k = serializers.IntegerField(min_value=1, max_value=20, default=4)
    document_ids = DocumentIdsField(required=False)
    mode = SearchModeField()


class RagOutputSerializer(GenerateOutputSerializer):
    sources = RagSourceSerializer(many=True)
    note = serializers.CharField(required=False)
