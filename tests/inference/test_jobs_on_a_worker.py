"""The design document's section 8: client → API → Redis queue → worker → result, with a real
Celery worker process on Redis."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Tenant


@pytest.mark.django_db(transaction=True)
def test_job_is_run_by_a_celery_worker_on_redis(
    alice: Tenant, openai_backend: str, celery_worker_process
) -> None:
    response = alice.client().post("/api/v1/jobs/", {"prompt": "hello", "max_tokens": 3}, format="json")
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    job_url = response["Location"]
    deadline = time.monotonic() + 90
    while True:
        job = alice.client().get(job_url).json()
        if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert job["status"] == "succeeded", job
    assert job["result"]["output"] == "tok0 tok1 tok2 "
