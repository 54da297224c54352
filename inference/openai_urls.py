from __future__ import annotations

from django.urls import path

from inference import openai_apis

urlpatterns = [
    path("chat/completions", openai_apis.ChatCompletionsApi.as_view(), name="openai-chat-completions"),
    path("completions", openai_apis.CompletionsApi.as_view(), name="openai-completions"),
    path("embeddings", openai_apis.EmbeddingsApi.as_view(), name="openai-embeddings"),
    path("models", openai_apis.ModelsApi.as_view(), name="openai-models"),
    path("models/<path:model>", openai_apis.ModelDetailApi.as_view(), name="openai-model"),
]
