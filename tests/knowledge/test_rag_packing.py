"""Issue #12, context packing: rag/ builds a prompt that fits the model's context, whatever the
model, and `sources` are exactly the passages the prompt holds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference.services import GenerationSpec, prompt_tokens_count
from knowledge.lib.packing import pack_passages, sentence_cuts
from knowledge.models import Chunk
from knowledge.services import SearchHit, rag_prompt
from tests.conftest import ROOT, Tenant, assert_error_shape

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks")]

QUESTION = "How do I run the tests?"
# Sentences of about twenty tokens each, so that a passage has many places to be cut.
SENTENCES = " ".join(
    f"Sentence {n} of the handbook says that step {n} of running the tests needs the database, "
    f"the cache and {n} patient engineers."
    for n in range(1, 121)
)


def _upload(tenant: Tenant, title: str, text: str, capture: Any) -> None:
    with capture(execute=True):
        response = tenant.client().post("/api/v1/documents/", {"title": title, "text": text}, format="json")
    assert response.status_code == 202, response.content


def _rag(tenant: Tenant, **body: Any) -> Any:
    return tenant.client().post("/api/v1/rag/", {"prompt": QUESTION, **body}, format="json")


def _prompt_tokens(tenant: Tenant, sources: list[dict[str, Any]], *, max_tokens: int = 256) -> int:
    """The rag/ prompt holding `sources`, as the served model counts it (chat framing included)."""
    hits = [
        SearchHit(
            document_id=s["document_id"],
            title=s["title"],
            chunk_id=s["chunk_id"],
            position=s["position"],
            score=s["score"],
            text=s["text"],
        )
        for s in sources
    ]
    spec = GenerationSpec(prompt=rag_prompt(question=QUESTION, hits=hits), chat=True, max_tokens=max_tokens)
    return prompt_tokens_count(organization=tenant.organization, spec=spec)


def _stored_text(source: dict[str, Any]) -> str:
    return Chunk.objects.get(pk=source["chunk_id"]).text


def test_default_model_answers_over_a_long_document_with_only_the_passages_it_holds(
    alice: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    """The shipped model's 1,024-token context, default parameters (top_k 4, max_tokens 256)."""
    _upload(alice, "README", (ROOT / "README.md").read_text(), django_capture_on_commit_callbacks)
    retrieved = alice.client().post("/api/v1/search/", {"query": QUESTION, "top_k": 4}, format="json")
    ranked = retrieved.json()["data"]
    # The four best passages, whole, leave no room for max_tokens (the 400).
    assert _prompt_tokens(alice, ranked) + 256 > 1024
    response = _rag(alice)
    assert response.status_code == 200, response.content
    body = response.json()
    sources = body["sources"]
    assert sources and (sources[-1]["trimmed"] or len(sources) < 4)
    # By rank: the first passages of the search's, the last one possibly cut.
    assert [s["chunk_id"] for s in sources] == [hit["chunk_id"] for hit in ranked[: len(sources)]]
    assert all(source["used_tokens"] > 0 for source in sources)
    assert all(not source["trimmed"] for source in sources[:-1])
    for source in sources:
        stored = _stored_text(source)
        if source["trimmed"]:
            assert stored.startswith(source["text"]) and source["text"] != stored
        else:
            assert source["text"] == stored
    # What the model was given: the question in its template plus exactly the listed passages.
    base = _prompt_tokens(alice, [])
    used = sum(source["used_tokens"] for source in sources)
    assert body["meta"]["prompt_tokens"] == _prompt_tokens(alice, sources) == base + used
    assert body["meta"]["prompt_tokens"] + 256 <= 1024


def test_small_configured_context_trims_the_last_passage_at_a_sentence_boundary(
    alice: Tenant, openai_backend: str, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.LLM_CONTEXT_LENGTH = 700
    _upload(alice, "Handbook", SENTENCES, django_capture_on_commit_callbacks)
    response = _rag(alice)
    assert response.status_code == 200, response.content
    sources = response.json()["sources"]
    assert len(sources) >= 2
    assert [source["trimmed"] for source in sources] == [False] * (len(sources) - 1) + [True]
    last = sources[-1]
    stored = _stored_text(last)
    assert stored.startswith(last["text"]) and len(last["text"]) < len(stored)
    assert last["text"].endswith("engineers.")
    # The longest run of sentences that fits: one more would not.
    limit = 700 - 256
    assert (
        _prompt_tokens(alice, sources)
        == _prompt_tokens(alice, []) + sum(s["used_tokens"] for s in sources)
        <= limit
    )
    longer = next(cut for cut in sentence_cuts(stored) if cut > len(last["text"]))
    assert _prompt_tokens(alice, [*sources[:-1], {**last, "text": stored[:longer]}]) > limit


def test_a_context_too_small_for_one_passage_is_400_saying_so(
    alice: Tenant, openai_backend: str, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.LLM_CONTEXT_LENGTH = 300
    _upload(alice, "Handbook", SENTENCES, django_capture_on_commit_callbacks)
    error = assert_error_shape(_rag(alice), status=400, code="context_length_exceeded")
    assert error["param"] == "max_tokens"
    assert "300-token context" in error["message"] and "even one passage" in error["message"]
    # With room for a passage, the same request answers.
    assert _rag(alice, max_tokens=64).status_code == 200


def test_streaming_lists_the_same_sources_as_the_answer(
    alice: Tenant, openai_backend: str, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.LLM_CONTEXT_LENGTH = 700
    _upload(alice, "Handbook", SENTENCES, django_capture_on_commit_callbacks)
    answered = _rag(alice).json()["sources"]
    response = _rag(alice, stream=True)
    assert response.status_code == 200
    events = b"".join(response.streaming_content).decode().strip().split("\n\n")
    assert events[0].startswith("event: sources")
    streamed = json.loads(events[0].split("data: ", 1)[1])["sources"]
    assert streamed == answered
    assert streamed[-1]["trimmed"]
    assert json.loads(events[-1].split("data: ", 1)[1])["sources"] == streamed


def test_a_remote_model_of_unknown_context_gets_every_passage(
    alice: Tenant, openai_backend: str, django_capture_on_commit_callbacks: Any
) -> None:
    _upload(alice, "Handbook", SENTENCES, django_capture_on_commit_callbacks)
    sources = _rag(alice).json()["sources"]
    assert len(sources) == 4
    assert not any(source["trimmed"] for source in sources)
    assert [source["text"] for source in sources] == [_stored_text(source) for source in sources]


def test_a_configured_context_bounds_every_route_of_a_remote_model(
    alice: Tenant, openai_backend: str, settings: Any
) -> None:
    settings.LLM_CONTEXT_LENGTH = 300
    response = alice.client().post(
        "/api/v1/generate/", {"prompt": "word " * 100, "max_tokens": 250}, format="json"
    )
    error = assert_error_shape(response, status=400, code="context_length_exceeded")
    assert "300-token context" in error["message"]


def test_another_tenant_s_passages_are_never_packed(
    alice: Tenant, charlie: Tenant, openai_backend: str, django_capture_on_commit_callbacks: Any
) -> None:
    _upload(alice, "Handbook", SENTENCES, django_capture_on_commit_callbacks)
    _upload(charlie, "Other", "Charlie's notes say nothing about tests.", django_capture_on_commit_callbacks)
    sources = _rag(charlie).json()["sources"]
    assert [source["title"] for source in sources] == ["Other"]


# --- The packing itself -------------------------------------------------------------------


def _words(texts: list[str]) -> int:
    return 2 + sum(len(text.split()) + 1 for text in texts)


def test_passages_are_added_by_rank_and_the_last_cut_at_a_sentence_end() -> None:
    passages = ["one two three.", "four five. six seven. eight nine ten.", "eleven."]
    packing = pack_passages(passages=passages, count=_words, limit=12)
    assert [(p.rank, p.text, p.used_tokens, p.trimmed) for p in packing.passages] == [
        (0, "one two three.", 4, False),
        (1, "four five. six seven.", 5, True),
    ]
    assert packing.prompt_tokens == packing.base_tokens + 9 == 11


def test_no_limit_takes_every_passage_and_too_small_a_limit_none() -> None:
    passages = ["one two.", "three four."]
    assert len(pack_passages(passages=passages, count=_words, limit=None).passages) == 2
    assert pack_passages(passages=passages, count=_words, limit=4).passages == []


def test_sentence_cuts_end_at_sentence_ends_and_line_breaks() -> None:
    text = 'He said "stop." Then e.g.x went on!\nA list item\nlast'
    assert [text[:cut] for cut in sentence_cuts(text)] == [
        'He said "stop."',
        'He said "stop." Then e.g.x went on!',
        'He said "stop." Then e.g.x went on!\nA list item',
    ]
