"""The official `openai` package, unchanged, as the client of the /v1 routes."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import Tenant

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sdk(alice: Tenant, live_server, openai_backend: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=alice.secret, max_retries=0)


def test_chat_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "Explain classes"}], max_tokens=4
    )
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_chat_completion_stream_with_usage(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model="fake-model", prompt="Once", max_tokens=2)
    assert completion.choices[0].text == "tok0 tok1 "


def test_models_list(sdk: openai.OpenAI) -> None:
    ids = [model.id for model in sdk.models.list()]
    assert "fake-model" in ids


def test_errors_are_raised_as_the_sdks_own_exceptions(sdk: openai.OpenAI, alice: Tenant, live_server) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "x"}], temperature=3
        )
    assert bad.value.param == "temperature"
    wrong = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-" + "x" * 48, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_embeddings_with_the_shipped_minilm(sdk: openai.OpenAI) -> None:
    result = sdk.embeddings.create(model="all-MiniLM-L6-v2", input=["Python classes", "Les classes Python"])
    assert [len(item.embedding) for item in result.data] == [384, 384]
    norm = sum(x * x for x in result.data[0].embedding) ** 0.5
    assert abs(norm - 1) < 1e-4
    assert result.usage.prompt_tokens > 0
