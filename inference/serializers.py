from __future__ import annotations

import copy
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.validators import NON_BLANK
from inference.services import GenerationSpec

# What the engine, the database's integer columns and OpenAI's own API take: a larger number is
# the caller's error, not an overflow further down.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_EMBEDDING_INPUTS = 256


class LeanSerializer(serializers.Serializer):
    # DRF deep-copies every declared field (re-instantiating it) for each serializer instance,
    # a third of the CPU a chat request spends in validation. Once bound, a field keeps no state
    # from one request to the next, so each instance gets shallow copies instead. (A comment, not
    # a docstring: the schema would show it as every request body's description.)

    def get_fields(self) -> dict[str, serializers.Field]:
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}


_STOP_STRING = {"type": "string", "minLength": 1, "maxLength": settings.MAX_STOP_CHARS}


@extend_schema_field(
    {
        "oneOf": [
            _STOP_STRING,
            {"type": "array", "items": _STOP_STRING, "maxItems": settings.MAX_STOP_SEQUENCES},
        ]
    }
)
class StopField(serializers.Field):
    """A string or a list of at most MAX_STOP_SEQUENCES (4, as OpenAI) non-empty strings of at
    most MAX_STOP_CHARS characters each."""

    def to_internal_value(self, data: Any) -> tuple[str, ...]:
        values = [data] if isinstance(data, str) else data
        if not isinstance(values, list):
            raise serializers.ValidationError("stop must be a non-empty string or a list of them.")
        if len(values) > settings.MAX_STOP_SEQUENCES:
            raise serializers.ValidationError(
                f"At most {settings.MAX_STOP_SEQUENCES} stop sequences.", code="array_above_max_length"
            )
        if not all(isinstance(v, str) and v for v in values):
            raise serializers.ValidationError("stop must be a non-empty string or a list of them.")
        if any(len(v) > settings.MAX_STOP_CHARS for v in values):
            raise serializers.ValidationError(
                f"Each stop sequence has at most {settings.MAX_STOP_CHARS} characters.",
                code="string_above_max_length",
            )
        return tuple(values)

    def to_representation(self, value: Any) -> Any:
        return list(value)


@extend_schema_field(
    {"type": "number", "format": "double", "minimum": 0, "exclusiveMinimum": True, "maximum": 1}
)
class TopPField(serializers.FloatField):
    """Nucleus sampling's probability mass: more than 0, at most 1."""

    def to_internal_value(self, data: Any) -> float:
        value = super().to_internal_value(data)
        if value <= 0:
            raise serializers.ValidationError("top_p must be greater than 0 and at most 1.")
        return value


class SamplingSerializer(LeanSerializer):
    temperature = serializers.FloatField(min_value=0.0, max_value=2.0, default=0.7)
    top_p = TopPField(max_value=1.0, default=1.0)
    max_tokens = serializers.IntegerField(min_value=1, max_value=INT32_MAX, required=False)
    stop = StopField(required=False)
    seed = serializers.IntegerField(min_value=INT64_MIN, max_value=INT64_MAX, required=False, allow_null=True)
    model = serializers.CharField(required=False, allow_blank=False, max_length=256, validators=[NON_BLANK])
    stream = serializers.BooleanField(default=False)


class GenerateInputSerializer(SamplingSerializer):
    """The design document's request: prompt, temperature, top_p, max_tokens, user_id."""

    prompt = serializers.CharField(
        trim_whitespace=False, max_length=settings.MAX_PROMPT_CHARS, validators=[NON_BLANK]
    )
    user_id = serializers.CharField(required=False, max_length=128, allow_blank=False, validators=[NON_BLANK])
    raw = serializers.BooleanField(
        default=False,
        help_text="Send the prompt to the model as written. By default it is the user's turn of "
        "the model's chat template (as Ollama's generate does): what an instruction asks for.",
    )

    def to_spec(self) -> GenerationSpec:
        data = self.validated_data
        return GenerationSpec(
            prompt=data["prompt"],
            chat=not data["raw"],
            temperature=data["temperature"],
            top_p=data["top_p"],
            max_tokens=data.get("max_tokens") or settings.DEFAULT_MAX_TOKENS,
            stop=data.get("stop", ()),
            seed=data.get("seed"),
            end_user=data.get("user_id"),
            model=data.get("model"),
        )


@extend_schema_field({"type": "boolean", "enum": [False], "default": False})
class NoStreamField(serializers.BooleanField):
    """A job's `stream`: false, or left out."""

    def to_internal_value(self, data: Any) -> bool:
        if super().to_internal_value(data):
            raise serializers.ValidationError("Jobs do not stream; use generate/ to stream.")
        return False


class JobInputSerializer(GenerateInputSerializer):
    """generate/'s request, queued for a worker: a job does not stream."""

    stream = NoStreamField(default=False)


class GenerateOutputSerializer(serializers.Serializer):
    class MetaSerializer(serializers.Serializer):
        tokens_used = serializers.IntegerField()
        prompt_tokens = serializers.IntegerField()
        completion_tokens = serializers.IntegerField()
        response_time = serializers.CharField(help_text='Seconds, as "1.23s".')
        model = serializers.CharField()
        finish_reason = serializers.ChoiceField(choices=["stop", "length"])
        request_id = serializers.CharField()

    output = serializers.CharField()
    meta = MetaSerializer()


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "description": "Content parts: the `text` of those of `type` text is the content.",
                "items": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
                },
            },
        ]
    }
)
class MessageContentField(serializers.JSONField):
    """A string, or OpenAI's content parts (a list of objects)."""


class MessageSerializer(LeanSerializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "developer", "tool"])
    content = MessageContentField()

    def validate_content(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            texts = [p.get("text", "") for p in value if isinstance(p, dict) and p.get("type") == "text"]
            if not all(isinstance(text, str) for text in texts):
                raise serializers.ValidationError("The text of a text part must be a string.")
            return "".join(texts)
        raise serializers.ValidationError("content must be a string or a list of text parts.")


class OpenAIInputSerializer(SamplingSerializer):
    max_completion_tokens = serializers.IntegerField(min_value=1, max_value=INT32_MAX, required=False)
    n = serializers.IntegerField(min_value=1, max_value=1, default=1)
    user = serializers.CharField(required=False, max_length=128, validators=[NON_BLANK])
    stream_options = serializers.DictField(required=False, allow_null=True)

    def _spec(self, **kwargs: Any) -> GenerationSpec:
        data = self.validated_data
        max_tokens = (
            data.get("max_completion_tokens") or data.get("max_tokens") or settings.DEFAULT_MAX_TOKENS
        )
        return GenerationSpec(
            temperature=data["temperature"],
            top_p=data["top_p"],
            max_tokens=max_tokens,
            stop=data.get("stop", ()),
            seed=data.get("seed"),
            end_user=data.get("user"),
            model=data.get("model"),
            **kwargs,
        )

    @property
    def include_usage(self) -> bool:
        options = self.validated_data.get("stream_options") or {}
        return bool(options.get("include_usage"))


class MessagesField(serializers.ListField):
    """At least one message and at most MAX_MESSAGES, counted before any message is validated (a
    ListField, not a ListSerializer, so that the schema states both bounds)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("child", MessageSerializer())
        kwargs.setdefault("allow_empty", False)
        kwargs.setdefault("min_length", 1)
        kwargs.setdefault("max_length", settings.MAX_MESSAGES)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[Any]:
        if self.max_length is not None and isinstance(data, list) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class ChatCompletionInputSerializer(OpenAIInputSerializer):
    messages = MessagesField(
        help_text=f"Their contents hold at most {settings.MAX_PROMPT_CHARS} characters together."
    )

    def validate_messages(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        total = sum(len(message["content"]) for message in value)
        if total > settings.MAX_PROMPT_CHARS:
            raise serializers.ValidationError(
                f"The messages' contents have {total} characters together; the limit is "
                f"{settings.MAX_PROMPT_CHARS}.",
                code="string_above_max_length",
            )
        return value

    def to_spec(self) -> GenerationSpec:
        messages = tuple(
            {"role": m["role"], "content": m["content"]} for m in self.validated_data["messages"]
        )
        return self._spec(messages=messages)


class CompletionInputSerializer(OpenAIInputSerializer):
    prompt = serializers.CharField(trim_whitespace=False, max_length=settings.MAX_PROMPT_CHARS)

    def to_spec(self) -> GenerationSpec:
        return self._spec(prompt=self.validated_data["prompt"])


_EMBEDDING_TEXT = {"type": "string", "minLength": 1, "maxLength": settings.MAX_PROMPT_CHARS}


@extend_schema_field(
    {
        "oneOf": [
            _EMBEDDING_TEXT,
            {"type": "array", "items": _EMBEDDING_TEXT, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS},
        ]
    }
)
class EmbeddingInputField(serializers.JSONField):
    """A text, or a list of texts (not token ids)."""


class EmbeddingInputSerializer(serializers.Serializer):
    input = EmbeddingInputField()
    model = serializers.CharField(required=False, max_length=256, validators=[NON_BLANK])
    user = serializers.CharField(required=False, max_length=128, validators=[NON_BLANK])
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], default="float")

    def validate_input(self, value: Any) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if isinstance(texts, list) and len(texts) > MAX_EMBEDDING_INPUTS:
            raise serializers.ValidationError(
                f"At most {MAX_EMBEDDING_INPUTS} inputs per request.", code="array_above_max_length"
            )
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise serializers.ValidationError("input must be a non-empty string or a list of them.")
        if any(len(text) > settings.MAX_PROMPT_CHARS for text in texts):
            raise serializers.ValidationError(
                f"Each input has at most {settings.MAX_PROMPT_CHARS} characters.",
                code="string_above_max_length",
            )
        return texts
