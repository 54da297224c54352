"""What one generation request may carry is capped (settings), each over-limit field a 400 that
names it, before any model work: prompt and messages length, messages count, the number and
length of stop strings, n, and integers the engine and database cannot hold."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from inference.serializers import ChatCompletionInputSerializer
from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db

CHAT = "/v1/chat/completions"


def _text(chars: int) -> str:
    """Prose-like text (few tokens per character, cheap to count) of exactly `chars` characters."""
    return ("word " * (chars // 5 + 1))[:chars]


def _refused(response: Any, param: str, code: str | None = None) -> dict[str, Any]:
    error = assert_error_shape(response, status=400, code=code)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("path", ["/api/v1/generate/", "/v1/completions", "/api/v1/rag/"])
def test_prompt_over_the_cap_is_400_naming_it(alice: Tenant, path: str) -> None:
    response = alice.client().post(path, {"prompt": _text(settings.MAX_PROMPT_CHARS + 1)}, format="json")
    _refused(response, "prompt", code="max_length")


def test_too_many_messages_is_400_naming_them(alice: Tenant) -> None:
    messages = [{"role": "user", "content": "hi"}] * (settings.MAX_MESSAGES + 1)
    response = alice.client().post(CHAT, {"messages": messages}, format="json")
    _refused(response, "messages", code="max_length")


def test_messages_longer_than_the_prompt_cap_together_are_400(alice: Tenant) -> None:
    half = settings.MAX_PROMPT_CHARS // 2 + 1
    messages = [
        {"role": "system", "content": _text(half)},
        {"role": "user", "content": [{"type": "text", "text": _text(half)}]},
    ]
    response = alice.client().post(CHAT, {"messages": messages}, format="json")
    _refused(response, "messages", code="string_above_max_length")


@pytest.mark.parametrize("path", ["/api/v1/generate/", CHAT])
def test_too_many_stop_strings_is_400(alice: Tenant, path: str) -> None:
    body = {
        "prompt": "hi",
        "messages": [{"role": "user", "content": "hi"}],
        "stop": [f"s{i}" for i in range(settings.MAX_STOP_SEQUENCES + 1)],
    }
    _refused(alice.client().post(path, body, format="json"), "stop", code="array_above_max_length")


@pytest.mark.parametrize("stop", [lambda n: "x" * n, lambda n: ["END", "x" * n]])
def test_stop_string_over_the_length_cap_is_400(alice: Tenant, stop: Any) -> None:
    body = {"prompt": "hi", "stop": stop(settings.MAX_STOP_CHARS + 1)}
    response = alice.client().post("/api/v1/generate/", body, format="json")
    _refused(response, "stop", code="string_above_max_length")


def test_stop_strings_at_the_caps_are_accepted(alice: Tenant, openai_backend: str) -> None:
    stop = ["x" * settings.MAX_STOP_CHARS] * settings.MAX_STOP_SEQUENCES
    body = {"prompt": "hi", "stop": stop, "max_tokens": 4}
    response = alice.client().post("/api/v1/generate/", body, format="json")
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        (CHAT, "n", 2),
        (CHAT, "n", 10**30),
        ("/api/v1/generate/", "seed", 10**30),
        ("/api/v1/generate/", "seed", -(10**30)),
        ("/api/v1/generate/", "max_tokens", 10**30),
        (CHAT, "max_completion_tokens", 2**31),
        ("/api/v1/generate/", "model", "m" * 10_000),
    ],
)
def test_numbers_and_names_out_of_range_are_400_naming_them(
    alice: Tenant, path: str, field: str, value: Any
) -> None:
    # Without a tokens-per-minute limit: admission, which counts max_tokens from the body before
    # the view validates it, would otherwise answer an absurd max_tokens with a 429.
    alice.organization.tokens_per_minute = None
    alice.organization.save()
    body = {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}], field: value}
    _refused(alice.client().post(path, body, format="json"), field)


def test_embedding_input_over_the_cap_is_400(alice: Tenant) -> None:
    body = {"input": ["short", _text(settings.MAX_PROMPT_CHARS + 1)]}
    response = alice.client().post("/v1/embeddings", body, format="json")
    _refused(response, "input", code="string_above_max_length")


def test_text_part_that_is_not_a_string_is_refused_naming_it() -> None:
    """The serializer's part; the API answer also needs usage.tokens' estimate, which reads the
    body before the view, to tolerate such a part."""
    messages = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
    serializer = ChatCompletionInputSerializer(data={"messages": messages})
    assert not serializer.is_valid()
    assert list(serializer.errors["messages"][0]) == ["content"]
