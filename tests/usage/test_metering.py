"""Metering a hostile tenant and a failing process cannot break: every admitted token charged
exactly once, in the ledger, the usage records and their rollups alike."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db.models import ProtectedError, Sum
from django.utils import timezone

from accounts.models import APIKey, Organization
from inference.jobs import job_run
from inference.models import GenerationJob
from tests.conftest import Tenant, assert_error_shape
from usage import services as usage_services
from usage.counters import budget_counters
from usage.models import UsageDaily, UsageDeadLetter, UsageRecord
from usage.records import dead_letters_retry, entries_write
from usage.services import budget_views, charged_key, get_ledger, reservations_expire, usage_stream_flush

pytestmark = pytest.mark.django_db(transaction=True)

needs_redis = pytest.mark.skipif(
    not settings.REDIS_URL, reason="the settlement stream is Redis's (CI sets it)"
)


def _charged(tenant: Tenant) -> int:
    """What the ledger charged the organization this month."""
    (total,) = get_ledger().charged(
        [charged_key(organization_id=tenant.organization.pk, when=timezone.now())]
    )
    return total or 0


def _recorded(organization: Organization) -> tuple[int, int, int]:
    """(records, their tokens, the rollups' tokens), once the stream is flushed."""
    usage_stream_flush()
    records = UsageRecord.objects.filter(organization=organization)
    tokens = sum(r.prompt_tokens + r.completion_tokens for r in records)
    daily = UsageDaily.objects.filter(organization=organization).aggregate(
        p=Sum("prompt_tokens"), c=Sum("completion_tokens")
    )
    return records.count(), tokens, (daily["p"] or 0) + (daily["c"] or 0)


def _generate(tenant: Tenant, body: dict[str, Any], **headers: str) -> Any:
    return tenant.client().post("/api/v1/generate/", body, format="json", **headers)


# --- The client's request id is not a billing key -----------------------------------------


def test_a_request_id_reused_20_times_gives_20_usage_records(alice: Tenant, openai_backend: str) -> None:
    for _ in range(20):
        response = _generate(alice, {"prompt": "same id", "max_tokens": 3}, HTTP_X_REQUEST_ID="replayed-id")
        assert response.status_code == 200
        assert response["X-Request-ID"] == "replayed-id"
    count, tokens, rolled_up = _recorded(alice.organization)
    assert count == 20
    assert UsageRecord.objects.filter(request_id="replayed-id").count() == 20
    assert tokens == rolled_up == _charged(alice) == 20 * (2 + 3)
    assert UsageDaily.objects.get(organization=alice.organization).requests == 20


@pytest.mark.parametrize("incoming", ["x" * 300, "x" * 65, "has spaces", "colon:1", "ümlaut"])
def test_a_request_id_that_is_long_or_not_plain_is_replaced(
    alice: Tenant, openai_backend: str, incoming: str
) -> None:
    response = _generate(alice, {"prompt": "odd id", "max_tokens": 2}, HTTP_X_REQUEST_ID=incoming)
    assert response.status_code == 200
    assert response["X-Request-ID"].startswith("req_")
    assert response.json()["meta"]["request_id"] == response["X-Request-ID"]
    _recorded(alice.organization)
    assert UsageRecord.objects.get(organization=alice.organization).request_id == response["X-Request-ID"]


def test_a_job_with_a_64_character_request_id_is_metered(
    alice: Tenant, openai_backend: str, eager_tasks: None
) -> None:
    response = alice.client().post(
        "/api/v1/jobs/", {"prompt": "queued", "max_tokens": 4}, format="json", HTTP_X_REQUEST_ID="j" * 64
    )
    assert response.status_code == 202, response.content
    job = GenerationJob.objects.get()
    assert job.status == GenerationJob.Status.SUCCEEDED
    count, tokens, rolled_up = _recorded(alice.organization)
    assert (count, tokens, rolled_up) == (1, 5, 5)
    assert UsageRecord.objects.get().request_id == "j" * 64


# --- Nothing the flush meets can freeze it ---------------------------------------------------


def test_a_key_deleted_with_its_records_in_flight_keeps_them(alice: Tenant, openai_backend: str) -> None:
    spare, secret = APIKey.objects.get(pk=alice.api_key.pk), alice.secret
    for _ in range(3):
        assert (
            alice.client(secret)
            .post("/api/v1/generate/", {"prompt": "x", "max_tokens": 2}, format="json")
            .status_code
            == 200
        )
    spare.delete()
    count, tokens, rolled_up = _recorded(alice.organization)
    assert (count, tokens, rolled_up) == (3, 9, 9)
    assert set(UsageRecord.objects.values_list("api_key_id", flat=True)) == {alice.api_key.pk}
    assert not UsageDeadLetter.objects.exists()


def test_an_organization_with_usage_cannot_be_deleted(alice: Tenant, openai_backend: str) -> None:
    assert _generate(alice, {"prompt": "x", "max_tokens": 2}).status_code == 200
    _recorded(alice.organization)
    with pytest.raises(ProtectedError):
        Organization.objects.get(pk=alice.organization.pk).delete()
    assert UsageRecord.objects.filter(organization_id=alice.organization.pk).count() == 1


def test_an_organization_deleted_with_a_record_in_flight_keeps_it(alice: Tenant, openai_backend: str) -> None:
    if not settings.REDIS_URL:
        pytest.skip("without Redis a record is written when it is settled: nothing is in flight")
    organization_id = alice.organization.pk
    assert _generate(alice, {"prompt": "x", "max_tokens": 2}).status_code == 200
    Organization.objects.filter(pk=organization_id).delete()
    usage_stream_flush()
    record = UsageRecord.objects.get(organization_id=organization_id)
    assert record.prompt_tokens + record.completion_tokens == 3
    assert not UsageDeadLetter.objects.exists()


def _good_record(index: int, organization_id: int) -> dict[str, Any]:
    return {
        "reservation_id": f"rsv_bulk_{index}",
        "request_id": f"bulk-{index}",
        "organization_id": organization_id,
        "api_key_id": None,
        "user_id": None,
        "end_user": "",
        "endpoint": "generate",
        "model": "fake-model",
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "created_at": "2026-11-20T10:00:00+00:00",
    }


@needs_redis
def test_one_bad_entry_among_a_thousand_is_set_aside_and_the_rest_land(alice: Tenant) -> None:
    ledger = get_ledger()
    ((records_stream, _events),) = ledger.streams()  # type: ignore[attr-defined]
    org = alice.organization.pk
    pipe = ledger.client.pipeline()  # type: ignore[attr-defined]
    for index in range(1000):
        record = _good_record(index, org)
        if index == 500:  # the database refuses it: tokens cannot be negative
            record["completion_tokens"] = -5
        pipe.xadd(records_stream, {"r": json.dumps(record)})
    pipe.execute()
    usage_stream_flush()
    assert UsageRecord.objects.count() == 999
    (letter,) = UsageDeadLetter.objects.all()
    assert letter.stream == "records" and json.loads(letter.payload)["reservation_id"] == "rsv_bulk_500"
    assert ledger.client.xlen(records_stream) == 0  # type: ignore[attr-defined]
    assert UsageDaily.objects.get(organization=alice.organization).requests == 999
    # The flush goes on: a later record lands.
    ledger.client.xadd(records_stream, {"r": json.dumps(_good_record(1000, org))})  # type: ignore[attr-defined]
    usage_stream_flush()
    assert UsageRecord.objects.count() == 1000


def test_entries_that_cannot_be_read_are_set_aside(alice: Tenant) -> None:
    good = json.dumps(_good_record(1, alice.organization.pk)).encode()
    written = entries_write(
        "records", [("1-0", b"{not json"), ("2-0", good), ("3-0", b'{"request_id": "no organization"}')]
    )
    assert written == 1
    assert sorted(UsageDeadLetter.objects.values_list("entry_id", flat=True)) == ["1-0", "3-0"]


def test_a_fixed_dead_letter_is_written_by_a_retry(alice: Tenant) -> None:
    bad = _good_record(7, alice.organization.pk) | {"completion_tokens": -1}
    entries_write("records", [("9-0", json.dumps(bad).encode())])
    letter = UsageDeadLetter.objects.get()
    letter.payload = json.dumps(bad | {"completion_tokens": 1})  # what an operator's fix does
    letter.save()
    assert dead_letters_retry(dead_letters=[letter]) == (1, 0)
    assert not UsageDeadLetter.objects.exists()
    assert UsageRecord.objects.get().completion_tokens == 1


def test_a_replayed_entry_is_written_once(alice: Tenant) -> None:
    entry = json.dumps(_good_record(3, alice.organization.pk)).encode()
    entries_write("records", [("1-0", entry), ("2-0", entry)])
    entries_write("records", [("3-0", entry)])
    assert UsageRecord.objects.count() == 1
    assert UsageDaily.objects.get().requests == 1


def test_a_revision_replaces_the_record_and_moves_the_rollup(alice: Tenant) -> None:
    first = _good_record(5, alice.organization.pk) | {
        "status": "expired",
        "prompt_tokens": 10,
        "completion_tokens": 90,
    }
    revised = first | {"status": "ok", "completion_tokens": 20, "revision": 1}
    # Whatever the order they arrive in, the later revision wins.
    entries_write("records", [("2-0", json.dumps(revised).encode())])
    entries_write("records", [("1-0", json.dumps(first).encode())])
    record = UsageRecord.objects.get()
    assert (record.status, record.revision, record.completion_tokens) == ("ok", 1, 20)
    UsageRecord.objects.all().delete()
    UsageDaily.objects.all().delete()
    entries_write("records", [("1-0", json.dumps(first).encode())])
    entries_write("records", [("2-0", json.dumps(revised).encode())])
    daily = UsageDaily.objects.get()
    assert (daily.requests, daily.prompt_tokens, daily.completion_tokens) == (1, 10, 20)


# --- Nothing admitted is free ----------------------------------------------------------------


def test_a_generation_running_twice_its_reservation_ttl_is_charged_in_full(
    alice: Tenant, openai_backend: str, settings: Any
) -> None:
    settings.RESERVATION_TTL_SECONDS = 2
    stop = threading.Event()
    expired: list[int] = []

    def expire_all_the_time() -> None:
        while not stop.is_set():
            expired.append(reservations_expire())
            time.sleep(0.05)

    expirer = threading.Thread(target=expire_all_the_time)
    expirer.start()
    started = time.monotonic()
    try:
        response = _generate(alice, {"prompt": "VERY_SLOW_STREAM please", "max_tokens": 60, "stream": True})
        body = b"".join(response.streaming_content).decode()
    finally:
        stop.set()
        expirer.join()
    assert time.monotonic() - started > 2 * settings.RESERVATION_TTL_SECONDS
    assert "event: done" in body
    assert sum(expired) == 0
    count, tokens, rolled_up = _recorded(alice.organization)
    record = UsageRecord.objects.get()
    assert (count, record.status, record.completion_tokens) == (1, "ok", 60)
    assert tokens == rolled_up == _charged(alice) == 2 + 60


def test_an_abandoned_reservation_is_charged_what_it_held_and_corrected_when_it_settles(
    alice: Tenant, openai_backend: str
) -> None:
    alice.organization.token_quota = 1000
    alice.organization.save()
    context = alice.context()
    reservation = usage_services.quota_reserve(
        context=context,
        end_user=None,
        endpoint="generate",
        model="m",
        request_id="r",
        amount=100,
        prompt_tokens=10,
    )
    usage_services._keeper.untrack(reservation.reservation_id)  # its process "died"
    assert get_ledger().expire(now=time.time() + settings.RESERVATION_TTL_SECONDS + 1) == 1
    (budget,) = budget_views(context=context)
    assert (budget.used, budget.reserved) == (100, 0)
    assert _recorded(alice.organization)[1:] == (100, 100)
    # The process was only slow: its settlement arrives late and is applied, not dropped.
    reservation.settle(prompt_tokens=10, completion_tokens=15)
    (budget,) = budget_views(context=context)
    assert (budget.used, budget.reserved) == (25, 0)
    count, tokens, rolled_up = _recorded(alice.organization)
    assert (count, tokens, rolled_up, _charged(alice)) == (1, 25, 25, 25)
    assert UsageRecord.objects.get().status == "ok"


@contextmanager
def _answer_lost(command: str, answer: bytes) -> Iterator[list[Any]]:
    """Redis runs `command` and, the first time it answers `answer`, the connection breaks
    before the answer arrives (Redis stopped between the two): the client sees a
    ConnectionError for a command that took effect. Yields the answer that was lost."""
    parse_response = redis.Redis.parse_response
    lost: list[Any] = []

    def answer_lost(client: redis.Redis, connection: Any, command_name: str, **options: Any) -> Any:
        response = parse_response(client, connection, command_name, **options)
        if command_name == command and not lost and response[0] == answer:
            lost.append(response)
            connection.disconnect()
            raise redis.ConnectionError("Connection closed by server.")
        return response

    with mock.patch.object(redis.Redis, "parse_response", answer_lost):
        yield lost


@needs_redis
def test_a_reservation_redis_made_but_never_answered_is_withdrawn_not_charged(
    alice: Tenant, openai_backend: str
) -> None:
    """The request is answered 503 (nothing charged): its hold, made by a Redis that went away
    before answering, must not expire later charging what it held."""
    alice.organization.token_quota = 1000
    alice.organization.save()
    with _answer_lost("EVALSHA", b"ok") as lost:  # the reservation's script
        response = _generate(alice, {"prompt": "hello", "max_tokens": 20})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"
    assert lost  # Redis did make the reservation
    usage_services._keeper.retry_pending()  # what the keeper does every second
    (budget,) = budget_views(context=alice.context())
    assert (budget.used, budget.reserved) == (0, 0)
    assert get_ledger().expire(now=time.time() + settings.RESERVATION_TTL_SECONDS + 1) == 0
    assert _recorded(alice.organization) == (0, 0, 0)
    assert _charged(alice) == 0
    # The rest of the request's life goes on as before.
    assert _generate(alice, {"prompt": "hello", "max_tokens": 20}).status_code == 200


@needs_redis
def test_a_reservation_sent_twice_is_held_once(alice: Tenant) -> None:
    """A client that sends the reservation again after its connection broke (the cluster
    client retries on another connection) does not hold the tokens twice."""
    alice.organization.token_quota = 1000
    alice.organization.save()
    context = alice.context()
    ledger = get_ledger()
    reservation_id = ledger.reservation_id_new(organization_id=alice.organization.pk)
    hold = {
        "reservation_id": reservation_id,
        "counters": budget_counters(context=context, end_user=None, now=timezone.now()),
        "amount": 100,
        "record": {"reservation_id": reservation_id, "organization_id": alice.organization.pk},
        "ttl_seconds": 60,
    }
    assert ledger.reserve(**hold) is None
    assert ledger.reserve(**hold) is None
    (budget,) = budget_views(context=context)
    assert (budget.used, budget.reserved) == (0, 100)
    assert ledger.cancel(reservation_id=reservation_id)
    (budget,) = budget_views(context=context)
    assert (budget.used, budget.reserved) == (0, 0)


def test_a_stream_the_upstream_cuts_is_charged_for_what_was_generated(
    alice: Tenant, openai_backend: str
) -> None:
    response = _generate(alice, {"prompt": "CUT_STREAM please", "max_tokens": 20, "stream": True})
    body = b"".join(response.streaming_content).decode()
    assert "event: error" in body
    count, tokens, rolled_up = _recorded(alice.organization)
    record = UsageRecord.objects.get()
    assert record.status == "error"
    assert record.completion_tokens > 0  # the chunks delivered before the upstream died
    assert tokens == rolled_up == _charged(alice) == record.prompt_tokens + record.completion_tokens


def test_a_stream_the_client_cuts_is_charged_for_what_was_generated(
    alice: Tenant, openai_backend: str
) -> None:
    response = _generate(alice, {"prompt": "SLOW_STREAM please", "max_tokens": 40, "stream": True})
    content = iter(response.streaming_content)
    received = b""
    while received.count(b"event: token") < 3:
        received += next(content)
    response.close()  # the client went away
    count, tokens, rolled_up = _recorded(alice.organization)
    record = UsageRecord.objects.get()
    assert record.status == "cancelled"
    assert 3 <= record.completion_tokens < 40
    assert tokens == rolled_up == _charged(alice)


def test_a_job_over_budget_is_refused_when_it_is_queued(alice: Tenant, openai_backend: str) -> None:
    alice.organization.token_quota = 50
    alice.organization.save()
    response = alice.client().post("/api/v1/jobs/", {"prompt": "too big", "max_tokens": 60}, format="json")
    assert_error_shape(response, status=429, code="insufficient_quota")
    assert not GenerationJob.objects.exists()


@needs_redis
def test_a_queued_job_holds_its_budget_until_a_worker_runs_it(alice: Tenant, openai_backend: str) -> None:
    alice.organization.token_quota = 100
    alice.organization.save()
    context = alice.context()
    # No worker runs in this test: the job waits in the broker's queue, as when all are busy.
    response = alice.client().post("/api/v1/jobs/", {"prompt": "later", "max_tokens": 60}, format="json")
    assert response.status_code == 202
    held = GenerationJob.objects.get().reserved_tokens
    (budget,) = budget_views(context=context)
    assert budget.reserved == held > 60
    # A second job does not fit beside it.
    second = alice.client().post("/api/v1/jobs/", {"prompt": "later", "max_tokens": 60}, format="json")
    assert_error_shape(second, status=429, code="insufficient_quota")
    # The worker picks it up: it runs on the reservation it was queued with.
    job_run(job_id=response.json()["id"])
    job = GenerationJob.objects.get(pk=response.json()["id"])
    assert job.status == GenerationJob.Status.SUCCEEDED
    (budget,) = budget_views(context=context)
    assert (budget.used, budget.reserved) == (1 + 60, 0)  # the upstream's count
    count, tokens, _ = _recorded(alice.organization)
    assert (count, tokens) == (1, 61)
    assert UsageRecord.objects.get().reservation_id == job.reservation_id


def test_a_queued_job_whose_hold_expired_unstarted_costs_nothing(alice: Tenant, openai_backend: str) -> None:
    alice.organization.token_quota = 1000
    alice.organization.save()
    context = alice.context()
    usage_services.quota_reserve(
        context=context,
        end_user=None,
        endpoint="jobs",
        model="m",
        request_id="q",
        amount=80,
        queued_for_seconds=5,
    )
    assert get_ledger().expire(now=time.time() + 6) == 1
    (budget,) = budget_views(context=context)
    assert (budget.used, budget.reserved) == (0, 0)


# --- Reconciliation --------------------------------------------------------------------------


def test_reconcile_is_clean_after_traffic_and_names_a_difference(
    alice: Tenant, openai_backend: str, capsys: Any
) -> None:
    for _ in range(3):
        assert _generate(alice, {"prompt": "x", "max_tokens": 4}).status_code == 200
    call_command("usage_reconcile", "--org", "alice")
    assert "Reconciled" in capsys.readouterr().out
    UsageRecord.objects.filter(organization=alice.organization).update(completion_tokens=1)
    with pytest.raises(CommandError, match="do not reconcile"):
        call_command("usage_reconcile", "--org", "alice")
    assert "the usage records hold" in capsys.readouterr().err


# --- A process that dies -----------------------------------------------------------------------


@needs_redis
@pytest.mark.slow
def test_a_server_killed_mid_response_is_charged_what_it_reserved(alice: Tenant, openai_backend: str) -> None:
    import http.client
    import os
    import signal
    import subprocess

    from bench.common import ROOT, free_port, wait_http, web_command
    from tests.conftest import server_env

    alice.organization.token_quota = 10_000
    alice.organization.save()
    port = free_port()
    server = subprocess.Popen(
        web_command(port=port, workers=1, threads=4),
        cwd=ROOT,
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", server)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request(
            "POST",
            "/api/v1/generate/",
            json.dumps({"prompt": "VERY_SLOW_STREAM please", "max_tokens": 50, "stream": True}),
            {"Authorization": f"Bearer {alice.secret}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        received = b""
        while received.count(b"event: token") < 3:
            received += response.read1(4096)
        # The client has part of the answer; the server dies before it can settle.
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    context = alice.context()
    (budget,) = budget_views(context=context)
    held = budget.reserved
    assert held > 50 and budget.used == 0
    assert get_ledger().expire(now=time.time() + settings.RESERVATION_TTL_SECONDS + 1) == 1
    (budget,) = budget_views(context=context)
    assert (budget.used, budget.reserved) == (held, 0)
    count, tokens, rolled_up = _recorded(alice.organization)
    assert (count, tokens, rolled_up, _charged(alice)) == (1, held, held, held)
    assert UsageRecord.objects.get().status == "expired"
