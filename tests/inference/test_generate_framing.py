"""generate/ with the shipped default model on the local engine: the prompt is the user's turn
of the model's chat template (as Ollama's generate does), or the raw text with `raw: true`."""

from __future__ import annotations

import pytest

from tests.conftest import Tenant

pytestmark = pytest.mark.django_db

QUESTION = "Explique les classes Python"
SAMPLING = {"max_tokens": 12, "seed": 7, "temperature": 0.7, "top_p": 1.0}


def test_generate_frames_the_prompt_as_the_users_chat_turn(alice: Tenant) -> None:
    client = alice.client()
    framed = client.post("/api/v1/generate/", {"prompt": QUESTION, **SAMPLING}, format="json")
    assert framed.status_code == 200, framed.content
    chat = client.post(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": QUESTION}], **SAMPLING},
        format="json",
    )
    assert chat.status_code == 200, chat.content
    assert framed.json()["output"] == chat.json()["choices"][0]["message"]["content"]
    assert framed.json()["meta"]["prompt_tokens"] == chat.json()["usage"]["prompt_tokens"]


def test_raw_generate_continues_the_prompt_as_written(alice: Tenant) -> None:
    client = alice.client()
    raw = client.post("/api/v1/generate/", {"prompt": QUESTION, "raw": True, **SAMPLING}, format="json")
    assert raw.status_code == 200, raw.content
    completion = client.post("/v1/completions", {"prompt": QUESTION, **SAMPLING}, format="json")
    assert completion.status_code == 200, completion.content
    assert raw.json()["output"] == completion.json()["choices"][0]["text"]
    framed = client.post("/api/v1/generate/", {"prompt": QUESTION, **SAMPLING}, format="json")
    assert framed.json()["meta"]["prompt_tokens"] > raw.json()["meta"]["prompt_tokens"]
