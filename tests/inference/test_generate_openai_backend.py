"""generate/, jobs and the /v1 routes through the openai backend, against a real HTTP upstream."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Tenant, assert_error_shape

pytestmark = pytest.mark.django_db


def test_generate_answers_output_and_meta(alice: Tenant, openai_backend: str) -> None:
    response = alice.client().post(
        "/api/v1/generate/",
        {
            "prompt": "Explique les classes Python",
            "temperature": 0.7,
            "top_p": 0.9,
            "max_tokens": 5,
            "user_id": "42",
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["output"] == "tok0 tok1 tok2 tok3 tok4 "
    meta = body["meta"]
    assert meta["completion_tokens"] == 5
    assert meta["prompt_tokens"] == 4  # the upstream's count, not ours
    assert meta["tokens_used"] == 9
    assert meta["model"] == "fake-model"
    assert meta["finish_reason"] == "length"
    assert meta["response_time"].endswith("s")
    assert meta["request_id"] == response["X-Request-ID"]


def test_generate_streams_tokens_then_one_event_with_meta(alice: Tenant, openai_backend: str) -> None:
    response = alice.client().post(
        "/api/v1/generate/", {"prompt": "hi", "max_tokens": 3, "stream": True}, format="json"
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = b"".join(response.streaming_content).decode().strip().split("\n\n")
    tokens = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: token")]
    assert "".join(tokens) == "tok0 tok1 tok2 "
    assert events[-1].startswith("event: done")
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert done["output"] == "tok0 tok1 tok2 "
    assert done["meta"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.2}, "top_p"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    alice: Tenant, openai_backend: str, body: dict, param: str
) -> None:
    error = assert_error_shape(alice.client().post("/api/v1/generate/", body, format="json"), status=400)
    assert error["param"] == param


def test_body_that_is_not_json_is_400(alice: Tenant, openai_backend: str) -> None:
    response = alice.client().post("/api/v1/generate/", data="{not json", content_type="application/json")
    assert_error_shape(response, status=400, code="invalid_json")


def test_unknown_model_is_404_model_not_found(alice: Tenant, openai_backend: str) -> None:
    response = alice.client().post("/api/v1/generate/", {"prompt": "x", "model": "gpt-9"}, format="json")
    error = assert_error_shape(response, status=404, code="model_not_found")
    assert error["param"] == "model"


def test_upstream_failure_is_502_and_not_billed(alice: Tenant, openai_backend: str) -> None:
    from usage.services import budget_views

    alice.organization.token_quota = 1000
    alice.organization.save()
    response = alice.client().post(
        "/api/v1/generate/", {"prompt": "FAIL_500 now", "max_tokens": 5}, format="json"
    )
    assert_error_shape(response, status=502, code="upstream_error")
    context = alice.context()
    (org_budget,) = budget_views(context=context)
    assert (org_budget.used, org_budget.reserved) == (0, 0)


def test_generate_needs_the_generate_scope(alice: Tenant, openai_backend: str) -> None:
    from accounts.services import api_key_create

    _key, secret = api_key_create(organization=alice.organization, name="reader", scopes=["usage:read"])
    response = alice.client(secret).post("/api/v1/generate/", {"prompt": "x"}, format="json")
    error = assert_error_shape(response, status=403, code="missing_scope")
    assert "generate" in error["message"]


def test_status_tells_backend_model_and_load(alice: Tenant, openai_backend: str) -> None:
    status = alice.client().get("/api/v1/status/").json()
    assert status["backend"] == "openai"
    assert status["model"] == "fake-model"
    assert status["state"] in {"idle", "loading", "ready"}
    assert {"device", "active_requests", "queued_requests", "error"} <= set(status)


def test_job_runs_in_process_and_its_result_has_the_generate_body(
    alice: Tenant, openai_backend: str, eager_tasks: None, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.client().post("/api/v1/jobs/", {"prompt": "hello", "max_tokens": 2}, format="json")
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    job = alice.client().get(f"/api/v1/jobs/{job_id}/").json()
    assert job["status"] == "succeeded"
    assert job["result"]["output"] == "tok0 tok1 "
    assert job["result"]["meta"]["completion_tokens"] == 2


def test_foreign_job_is_404(
    alice: Tenant, charlie: Tenant, openai_backend: str, eager_tasks: None, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        job_id = (
            alice.client()
            .post("/api/v1/jobs/", {"prompt": "hello", "max_tokens": 2}, format="json")
            .json()["id"]
        )
    response = charlie.client().get(f"/api/v1/jobs/{job_id}/")
    assert_error_shape(response, status=404)
    assert "hello" not in response.content.decode()
