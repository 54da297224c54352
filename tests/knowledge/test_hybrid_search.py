from __future__ import annotations

import pytest

from tests.conftest import Tenant, assert_error_shape

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks")]

# One passage names a rare identifier but is about something else; the others are about what the
# question is about, in other words. By meaning alone they win; by its words, only the first matches.
GARDEN = (
    "The spring garden club meets on Tuesdays in the greenhouse; members bring seeds and cuttings to "
    "swap. Booked under ZX_4471_ROSE."
)
TICKETS = {
    "Support requests": "Every support request gets a number when it is opened; the team answers requests "
    "in the order they arrive.",
    "Issue priorities": "Urgent issues are outages; normal issues are questions on billing or configuration.",
    "Closing cases": "A case is closed once the customer confirms the fix; reopened cases go back to the queue.",
}
QUESTION = "What is ticket ZX_4471_ROSE about?"
MODES = ("hybrid", "vector", "keyword")


def _upload(tenant: Tenant, title: str, text: str, capture) -> int:
    with capture(execute=True):
        response = tenant.client().post("/api/v1/documents/", {"title": title, "text": text}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def _search(tenant: Tenant, query: str, **body):
    response = tenant.client().post("/api/v1/search/", {"query": query, **body}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["data"]


@pytest.fixture
def library(alice: Tenant, django_capture_on_commit_callbacks) -> dict[str, int]:
    ids = {"Garden club": _upload(alice, "Garden club", GARDEN, django_capture_on_commit_callbacks)}
    for title, text in TICKETS.items():
        ids[title] = _upload(alice, title, text, django_capture_on_commit_callbacks)
    return ids


def test_rare_identifier_ranks_first_in_hybrid_where_vectors_miss_it(alice: Tenant, library) -> None:
    vector = _search(alice, QUESTION, mode="vector", top_k=4)
    assert vector[0]["title"] != "Garden club"
    hybrid = _search(alice, QUESTION, top_k=4)  # hybrid is the default
    assert hybrid[0]["title"] == "Garden club"
    assert {hit["title"] for hit in hybrid} == set(library)


@pytest.mark.parametrize(
    "identifier", ["ZX_4471_ROSE", "zx_4471_rose", "(ZX_4471_ROSE)", "KNOWLEDGE_INDEX_DIR", "E1234"]
)
def test_keyword_mode_matches_identifiers_whole(
    alice: Tenant, django_capture_on_commit_callbacks, library, identifier: str
) -> None:
    _upload(
        alice,
        "Settings",
        "Point KNOWLEDGE_INDEX_DIR at a local disk; a missing folder fails with E1234.",
        django_capture_on_commit_callbacks,
    )
    hits = _search(alice, identifier, mode="keyword")
    expected = "Garden club" if "4471" in identifier else "Settings"
    assert [hit["title"] for hit in hits] == [expected]


def test_keyword_mode_does_not_split_identifiers_into_their_words(
    alice: Tenant, django_capture_on_commit_callbacks
) -> None:
    _upload(
        alice,
        "Errors",
        "The gateway answers model_not_found for an unknown model.",
        django_capture_on_commit_callbacks,
    )
    _upload(alice, "Prose", "The model was not found in the garden shed.", django_capture_on_commit_callbacks)
    _upload(
        alice,
        "Snake",
        "Names like snake_case_names are common in Python.",
        django_capture_on_commit_callbacks,
    )
    assert [hit["title"] for hit in _search(alice, "model_not_found", mode="keyword")] == ["Errors"]
    assert [hit["title"] for hit in _search(alice, "snake_case_names", mode="keyword")] == ["Snake"]
    # Common words alone match nothing: they would match every passage.
    assert _search(alice, "what is the", mode="keyword") == []


def test_keyword_mode_matches_other_forms_of_a_word_but_ranks_the_exact_form_first(
    alice: Tenant, django_capture_on_commit_callbacks
) -> None:
    _upload(
        alice,
        "Decorator",
        "A decorator wraps the function it is applied to.",
        django_capture_on_commit_callbacks,
    )
    _upload(
        alice,
        "Decorators",
        "Decorators wrap the functions they are applied to.",
        django_capture_on_commit_callbacks,
    )
    _upload(alice, "Garden", "The greenhouse is warm in spring.", django_capture_on_commit_callbacks)
    assert [hit["title"] for hit in _search(alice, "decorators", mode="keyword")] == [
        "Decorators",
        "Decorator",
    ]
    assert [hit["title"] for hit in _search(alice, "decorator", mode="keyword")] == [
        "Decorator",
        "Decorators",
    ]


def test_keyword_mode_ranks_by_shared_words_and_scopes_by_document_ids(alice: Tenant, library) -> None:
    hits = _search(alice, "reopened support case queue", mode="keyword", top_k=4)
    assert hits[0]["title"] == "Closing cases"
    assert hits[0]["score"] > hits[-1]["score"]
    assert "Garden club" not in {hit["title"] for hit in hits}
    scoped = _search(alice, "case request", mode="keyword", document_ids=[library["Support requests"]])
    assert [hit["title"] for hit in scoped] == ["Support requests"]


def test_min_score_is_a_similarity_in_every_mode(alice: Tenant, library) -> None:
    for mode in MODES:
        assert _search(alice, QUESTION, mode=mode, min_score=0.99) == []
        assert _search(alice, QUESTION, mode=mode, min_score=-1.0)


def test_deleted_document_is_gone_from_every_mode(
    alice: Tenant, library, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        assert alice.client().delete(f"/api/v1/documents/{library['Garden club']}/").status_code == 204
    for mode in MODES:
        assert "Garden club" not in {hit["title"] for hit in _search(alice, QUESTION, mode=mode, top_k=10)}


@pytest.mark.parametrize("mode", MODES)
def test_charlie_never_retrieves_alices_passages_in_any_mode(
    alice: Tenant, charlie: Tenant, library, django_capture_on_commit_callbacks, mode: str
) -> None:
    _upload(
        charlie, "Charlie's ticket", "Charlie's ticket about the garden.", django_capture_on_commit_callbacks
    )
    for query in (QUESTION, "ZX_4471_ROSE"):
        hits = _search(charlie, query, mode=mode, top_k=10)
        assert [hit["title"] for hit in hits] in ([], ["Charlie's ticket"])
    assert _search(charlie, QUESTION, mode=mode, document_ids=[library["Garden club"]]) == []
    assert "Garden club" in {hit["title"] for hit in _search(alice, "ZX_4471_ROSE", mode=mode, top_k=10)}


@pytest.mark.parametrize("path", ["/api/v1/search/", "/api/v1/rag/"])
@pytest.mark.parametrize("mode", ["bm25", "", None, 3])
def test_unknown_mode_is_400_naming_mode(alice: Tenant, path: str, mode) -> None:
    body = {"query": QUESTION, "prompt": QUESTION, "mode": mode}
    error = assert_error_shape(alice.client().post(path, body, format="json"), status=400)
    assert error["param"] == "mode"


def test_rag_takes_a_mode(alice: Tenant, library, openai_backend: str) -> None:
    for mode in MODES:
        response = alice.client().post(
            "/api/v1/rag/",
            {"prompt": "ZX_4471_ROSE", "mode": mode, "max_tokens": 8, "top_k": 1},
            format="json",
        )
        assert response.status_code == 200, response.content
        titles = [source["title"] for source in response.json()["sources"]]
        assert titles == ["Garden club"] or mode == "vector"


def test_on_postgresql_common_words_rank_but_do_not_make_candidates(
    alice: Tenant, library, monkeypatch
) -> None:
    from django.db import connection

    from knowledge import keywords

    if connection.vendor != "postgresql":
        pytest.skip("SQLite's FTS5 ranks every match")
    monkeypatch.setattr(keywords, "COMMON_WORD_PASSAGES", 2)
    # Each word is in fewer than two passages: rare, so any of them makes a candidate.
    assert _search(alice, "reopened case queue", mode="keyword")[0]["title"] == "Closing cases"
    monkeypatch.setattr(keywords, "COMMON_WORD_PASSAGES", 1)
    # Every word is now common: a candidate must hold them all.
    assert [hit["title"] for hit in _search(alice, "reopened queue", mode="keyword")] == ["Closing cases"]
    assert _search(alice, "reopened greenhouse", mode="keyword") == []


@pytest.mark.parametrize(
    "query",
    [
        "™ ‽",
        "'; DROP TABLE x; --",
        "a&b|c !d <-> e:*",
        'NEAR("a" "b") OR -c',
        "日本語の質問",
        "\\ \\\\ %s %(x)s",
        "x" * 3000,
    ],
)
def test_any_query_text_is_searched_not_parsed(alice: Tenant, library, query: str) -> None:
    for mode in MODES:
        assert isinstance(_search(alice, query, mode=mode), list)


# A section long enough for several passages: only the first repeats the heading, which names
# what the question asks about; the rest of the section never says it again.
ROTATION_STEPS = " ".join(
    f"Step {n}: copy the new pair to host {n}, check its fingerprint against the ticket, "
    f"then reload the proxy on host {n} and watch its error log for a minute."
    for n in range(1, 25)
)
HANDBOOK = f"""# Operations handbook

## Certificate rotation

{ROTATION_STEPS}

## Log retention

Logs are kept for thirty days, then compressed and moved to cold storage.
"""


def test_a_passage_under_a_heading_that_names_the_asked_term_ranks_first(
    alice: Tenant, django_capture_on_commit_callbacks
) -> None:
    _upload(alice, "Operations handbook", HANDBOOK, django_capture_on_commit_callbacks)
    _upload(
        alice,
        "Garden club",
        "Members who finish the pruning course get a certificate; the rotation of plots is drawn by lot.",
        django_capture_on_commit_callbacks,
    )
    for mode in ("keyword", "hybrid"):
        hits = _search(alice, "certificate rotation steps for the last hosts", mode=mode, top_k=10)
        later = [
            hit for hit in hits if hit["title"] == "Operations handbook" and "rotation" not in hit["text"]
        ]
        assert later, mode  # passages of the section that do not say "rotation" are found by its heading
        titles = [hit["title"] for hit in hits]
        assert titles.index("Operations handbook") == 0, (mode, titles)
        assert hits.index(later[0]) < titles.index("Garden club"), (mode, titles)
