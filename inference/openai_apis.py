"""OpenAI-compatible routes under /v1/, so that OpenAI clients and SDKs work unchanged."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.context import auth_context
from accounts.scopes import GENERATE
from common.openapi import SSE_EVENT_SCHEMA
from common.request_notes import request_notes
from inference import openai_format
from inference.serializers import (
    ChatCompletionInputSerializer,
    CompletionInputSerializer,
    EmbeddingInputSerializer,
    OpenAIInputSerializer,
)
from inference.services import (
    GenerationSession,
    ModelNotFoundError,
    embedding_model_name,
    embedding_model_named_in,
    embeddings_create,
    generation_run,
    generation_stream_open,
    model_named_in,
    models_allowed,
    router_get,
)
from inference.streaming import sse_response, stream_error_event
from usage.admission import RouteCost

# A completion, or with `stream: true` its chunks as server-sent events (`data: [DONE]` last).
_COMPLETION_RESPONSES = {(200, "application/json"): dict, (200, "text/event-stream"): SSE_EVENT_SCHEMA}


def _openai_stream(
    session: GenerationSession, *, chat: bool, include_usage: bool, id: str, model: str
) -> Iterator[bytes]:
    try:
        yield from openai_format.stream_body(
            chat=chat, id=id, model=model, include_usage=include_usage, events=session.events()
        )
    except Exception as exc:
        yield stream_error_event(exc)
        yield openai_format.sse("[DONE]")


class _CompletionsBase(APIView):
    required_scope = GENERATE
    serializer_class: type[OpenAIInputSerializer]
    endpoint: str

    def post(self, request: Request) -> Response | StreamingHttpResponse:
        serializer = self.serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        notes = request_notes(request)
        context, spec = auth_context(request), serializer.to_spec()  # type: ignore[attr-defined]
        is_chat = self.endpoint == "chat.completions"
        completion_id = openai_format.new_id("chatcmpl" if is_chat else "cmpl")
        if serializer.validated_data["stream"]:
            session = generation_stream_open(
                context=context,
                spec=spec,
                request_id=notes.request_id,
                endpoint=self.endpoint,
                admitted=notes.reservation,
            )
            events = _openai_stream(
                session,
                chat=is_chat,
                include_usage=serializer.include_usage,
                id=completion_id,
                model=session.model,
            )
            return sse_response(events, session=session)
        outcome = generation_run(
            context=context,
            spec=spec,
            request_id=notes.request_id,
            endpoint=self.endpoint,
            admitted=notes.reservation,
        )
        build = openai_format.chat_completion if is_chat else openai_format.completion
        return Response(
            build(
                id=completion_id,
                model=outcome.model,
                text=outcome.text,
                finish_reason=outcome.finish_reason,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
            )
        )


class ChatCompletionsApi(_CompletionsBase):
    serializer_class = ChatCompletionInputSerializer
    endpoint = "chat.completions"
    cost = RouteCost(endpoint="chat.completions", model=model_named_in)

    @extend_schema(
        tags=["openai"],
        request=ChatCompletionInputSerializer,
        responses=_COMPLETION_RESPONSES,
        description="OpenAI chat completions, streaming included (`stream_options.include_usage`).",
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)


class CompletionsApi(_CompletionsBase):
    serializer_class = CompletionInputSerializer
    endpoint = "completions"
    cost = RouteCost(endpoint="completions", model=model_named_in)

    @extend_schema(tags=["openai"], request=CompletionInputSerializer, responses=_COMPLETION_RESPONSES)
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)


class EmbeddingsApi(APIView):
    required_scope = GENERATE
    cost = RouteCost(endpoint="embeddings", model=embedding_model_named_in)

    @extend_schema(tags=["openai"], request=EmbeddingInputSerializer, responses={200: dict})
    def post(self, request: Request) -> Response:
        serializer = EmbeddingInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        requested = serializer.validated_data.get("model")
        if requested and requested != embedding_model_name():
            raise ModelNotFoundError(
                f"The embedding model '{requested}' does not exist. This server serves '{embedding_model_name()}'.",
                param="model",
            )
        notes = request_notes(request)
        outcome = embeddings_create(
            context=auth_context(request),
            texts=serializer.validated_data["input"],
            request_id=notes.request_id,
            end_user=serializer.validated_data.get("user"),
            admitted=notes.reservation,
        )
        if serializer.validated_data["encoding_format"] == "base64":
            # Little-endian float32, as OpenAI encodes it (the official SDK asks for this).
            encoded: list[Any] = [
                base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in outcome.vectors
            ]
        else:
            encoded = outcome.vectors
        return Response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(encoded)],
                "model": outcome.model,
                "usage": {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens},
            }
        )


def _model_ids(request: Request) -> list[str]:
    """What the caller's organization may send as `model`: each model it may use and its
    aliases, then the embedding model."""
    allowed = set(models_allowed(organization=auth_context(request).organization))
    ids = []
    for model in router_get().models:
        if model.name in allowed:
            ids += [model.name, *model.config.aliases]
    return [*ids, embedding_model_name()]


class ModelsApi(APIView):
    required_scope = None

    @extend_schema(tags=["openai"], responses={200: dict}, operation_id="v1_models_list")
    def get(self, request: Request) -> Response:
        return Response(
            {"object": "list", "data": [openai_format.model_card(id) for id in _model_ids(request)]}
        )


class ModelDetailApi(APIView):
    required_scope = None

    @extend_schema(tags=["openai"], responses={200: dict})
    def get(self, request: Request, model: str) -> Response:
        if model not in _model_ids(request):
            raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model")
        return Response(openai_format.model_card(model))
