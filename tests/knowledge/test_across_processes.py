"""Web workers and Celery workers are separate processes: a document a worker indexes is
searchable by every web worker on its next query, without a restart."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.conftest import Tenant

pytestmark = pytest.mark.django_db(transaction=True)


def _call(url: str, secret: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _indexed(base: str, secret: str, document_id: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        status = _call(f"{base}/api/v1/documents/{document_id}/", secret)["status"]
        if status == "indexed":
            return
        assert status != "failed" and time.monotonic() < deadline, status
        time.sleep(0.3)


def test_document_indexed_by_a_worker_is_found_by_every_web_worker(
    alice: Tenant, celery_worker_process: Any, start_web_server: Any
) -> None:
    base = start_web_server(workers=2, threads=2)
    first = _call(
        f"{base}/api/v1/documents/",
        alice.secret,
        {"title": "Generators", "text": "A generator function contains yield expressions."},
    )
    _indexed(base, alice.secret, first["id"])
    for _ in range(6):  # several requests, so both web workers answer
        titles = [
            h["title"]
            for h in _call(f"{base}/api/v1/search/", alice.secret, {"query": "yield", "top_k": 5})["data"]
        ]
        assert titles == ["Generators"]
    second = _call(
        f"{base}/api/v1/documents/",
        alice.secret,
        {"title": "Classes", "text": "Classes bundle data and functionality together."},
    )
    _indexed(base, alice.secret, second["id"])
    for _ in range(6):
        titles = {
            h["title"]
            for h in _call(f"{base}/api/v1/search/", alice.secret, {"query": "class", "top_k": 5})["data"]
        }
        assert titles == {"Generators", "Classes"}
