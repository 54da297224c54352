"""What must hold across processes: budgets under concurrent load, rate limits across servers,
streams cut by the client. Real web server processes on PostgreSQL and Redis (CI)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db.models import F, Sum
from django_ratelimit.core import _get_window

from tests.conftest import Tenant, get_status
from usage.models import UsageRecord
from usage.services import budget_views, usage_stream_flush

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.REDIS_URL, reason="several processes share state only through Redis (CI sets REDIS_URL)"
    ),
]


def _post(url: str, secret: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _client_process(url: str, secret: str, count: int) -> list[tuple[int, str | None]]:
    """One load-generating process: `count` requests from 10 threads."""
    body = {"prompt": "count the budget", "max_tokens": 10}
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _i: _post(url, secret, body), range(count)))
    return [(status, payload.get("error", {}).get("code")) for status, payload in results]


def test_concurrent_requests_from_several_processes_never_overspend_and_leave_nothing_reserved(
    alice: Tenant, openai_backend: str, start_web_server: Any, shared_redis: str
) -> None:
    alice.organization.token_quota = 600
    alice.organization.requests_per_minute = None
    alice.organization.tokens_per_minute = None
    alice.organization.save()
    base = start_web_server(workers=2, threads=16)
    with ProcessPoolExecutor(max_workers=4) as pool:
        batches = list(
            pool.map(_client_process, [f"{base}/api/v1/generate/"] * 4, [alice.secret] * 4, [50] * 4)
        )
    outcomes = [outcome for batch in batches for outcome in batch]
    assert len(outcomes) == 200
    assert {status for status, _code in outcomes} <= {200, 429}
    assert all(code == "insufficient_quota" for status, code in outcomes if status == 429)
    admitted = sum(1 for status, _ in outcomes if status == 200)
    assert 0 < admitted < 200

    # A response is charged when the server has sent it: wait for the last ones to settle.
    deadline = time.monotonic() + 10
    while budget_views(context=alice.context())[0].reserved and time.monotonic() < deadline:
        time.sleep(0.05)
    usage_stream_flush()
    charged = UsageRecord.objects.filter(organization=alice.organization).aggregate(
        total=Sum(F("prompt_tokens") + F("completion_tokens"))
    )["total"]
    assert UsageRecord.objects.filter(organization=alice.organization, status="ok").count() == admitted
    (budget,) = budget_views(context=alice.context())
    assert charged <= 600
    assert budget.used == charged
    assert budget.reserved == 0


@pytest.mark.parametrize(
    ("route", "shared_redis"),
    [("me", "redis"), ("generate", "redis"), ("generate", "redis-cluster")],
    indirect=["shared_redis"],
)
def test_requests_per_minute_holds_exactly_across_two_server_processes(
    alice: Tenant, openai_backend: str, start_web_server: Any, route: str, shared_redis: str
) -> None:
    """`me` is counted by the middleware; `generate` in the same atomic step as its budget (on
    a Redis Cluster, in its organization's slot)."""
    limit = 10
    alice.organization.requests_per_minute = limit
    alice.organization.save()
    servers = [start_web_server(workers=1, threads=4), start_web_server(workers=1, threads=4)]
    window_end = _get_window(f"org:{alice.organization.pk}", 60)
    if window_end - time.time() < 8:  # too close to the window's end: start in the next one
        # django-ratelimit's window still counts its last second (int(now) == window_end), so
        # the next one starts a whole second after window_end.
        time.sleep(window_end - time.time() + 1.5)
    urls = [f"{servers[i % 2]}/api/v1/{route}/" for i in range(3 * limit)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        if route == "me":
            statuses = list(pool.map(lambda url: get_status(url, alice.secret), urls))
        else:
            body = {"prompt": "count the requests", "max_tokens": 4}
            statuses = [status for status, _ in pool.map(lambda url: _post(url, alice.secret, body), urls)]
    assert statuses.count(200) == limit
    assert statuses.count(429) == 2 * limit


def test_stream_cut_by_the_client_is_billed_for_what_it_generated(
    alice: Tenant, openai_backend: str, start_web_server: Any
) -> None:
    base = start_web_server(workers=1, threads=4)
    parsed = urlparse(base)
    body = json.dumps({"prompt": "SLOW_STREAM please", "max_tokens": 40, "stream": True}).encode()
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/v1/generate/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {alice.secret}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"event: token") < 3:
            received += sock.recv(4096)
    # The client is gone; the server notices on its next write and settles the stream.
    deadline = time.monotonic() + 30
    record = None
    while record is None and time.monotonic() < deadline:
        usage_stream_flush()
        record = UsageRecord.objects.filter(organization=alice.organization).first()
        time.sleep(0.2)
    assert record is not None
    assert record.status == "cancelled"
    assert 3 <= record.completion_tokens < 40
