"""On a Redis Cluster (REDIS_CLUSTER_NODES): an organization's admission keys share one hash slot,
so admission stays one atomic script; organizations spread over the nodes; expiry, the flush and
the metrics go over every shard; the Django cache and key revocation work across processes.
The quota tests under load run on the cluster too (tests/usage/test_quotas_under_load.py)."""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from redis.crc import key_slot

from accounts.services import api_key_revoke
from bench.redis_cluster import LocalRedisCluster, redis_server_missing
from common.shared_redis import redis_client
from tests.conftest import Tenant, assert_error_shape, get_status, make_tenant, use_redis_cluster
from usage import services as usage_services
from usage.ledger import CLUSTER_SHARDS, RedisLedger
from usage.metrics import MeteringCollector
from usage.models import UsageRecord
from usage.services import get_ledger, key_layout, reservations_expire, usage_stream_flush

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"prompt": "hello cluster", "max_tokens": 5}
KINDS = (":rl:", ":organization:", ":api_key:", ":charged:", ":usage:records")


def _ledger_keys() -> list[str]:
    """The run's keys other than the Django cache's (`<prefix>:<version>:…`)."""
    prefix = settings.CACHE_KEY_PREFIX
    found = [key.decode() for key in redis_client().scan_iter(f"{prefix}:*", count=1000)]
    return [key for key in found if not key.startswith(f"{prefix}:1:")]


def test_an_organizations_admission_keys_share_one_slot(
    alice: Tenant, openai_backend: str, on_redis_cluster: list[str]
) -> None:
    organization = alice.organization
    organization.token_quota = 1_000
    organization.requests_per_minute = 100
    organization.tokens_per_minute = 10_000
    organization.save()
    alice.api_key.token_budget = 500
    alice.api_key.requests_per_minute = 50
    alice.api_key.save()

    assert alice.client().post("/api/v1/generate/", BODY, format="json").status_code == 200

    keys = _ledger_keys()
    # Both budgets, three rate-limit windows (the key has no tokens per minute), the charged
    # total and the records stream, all in the slot of the organization's tag.
    kinds = Tally(next(kind for kind in KINDS if kind in key) for key in keys)
    assert kinds == {":rl:": 3, ":organization:": 1, ":api_key:": 1, ":charged:": 1, ":usage:records": 1}, (
        keys
    )
    tag = key_layout().organization_tag(organization.pk)
    assert {key_slot(key.encode()) for key in keys} == {key_slot(tag.encode())}
    assert isinstance(get_ledger(), RedisLedger)
    (budget,) = [b for b in alice.client().get("/api/v1/me/").json()["budgets"] if "quota" in b["name"]]
    assert budget["used"] > 0 and budget["reserved"] == 0


def test_organizations_spread_over_every_node(on_redis_cluster: list[str]) -> None:
    client = redis_client()
    layout = key_layout()
    assert layout.shards == CLUSTER_SHARDS
    nodes = Tally(
        client.get_node_from_key(layout.organization_tag(organization_id)).name  # type: ignore[union-attr]
        for organization_id in range(1, CLUSTER_SHARDS + 1)
    )
    assert set(nodes) == set(on_redis_cluster)
    assert max(nodes.values()) - min(nodes.values()) <= 1  # 6, 5 and 5 shards


def test_expiry_the_flush_and_the_metrics_go_over_every_shard(
    openai_backend: str, on_redis_cluster: list[str]
) -> None:
    tenants = [make_tenant(f"tenant{index}", token_quota=1_000) for index in range(3)]
    shards = {key_layout().organization_shard(t.organization.pk) for t in tenants}
    assert len(shards) == 3
    for tenant in tenants:
        assert tenant.client().post("/api/v1/generate/", BODY, format="json").status_code == 200
    assert usage_stream_flush() == 3

    ledger = get_ledger()
    lost = []
    for tenant in tenants:  # a reservation in each shard whose process died
        reservation_id = ledger.reservation_id_new(organization_id=tenant.organization.pk)
        lost.append(reservation_id)
        ledger.reserve(
            reservation_id=reservation_id,
            counters=[],
            amount=7,
            record={
                "reservation_id": reservation_id,
                "request_id": "lost",
                "organization_id": tenant.organization.pk,
                "endpoint": "generate",
                "model": "fake-model",
                "created_at": "2026-11-20T10:00:00+00:00",
            },
            ttl_seconds=1,
        )
    metrics = {m.name: m.samples[0].value for m in MeteringCollector().collect()}
    assert metrics["llmp_reservations_active"] == 3
    ledger.extend(reservation_ids=lost[:2], ttl_seconds=60)  # their keeper, one round trip
    assert ledger.expire(now=time.time() + 2) == 1
    assert ledger.expire(now=time.time() + 61) == 2
    assert reservations_expire() == 0
    metrics = {m.name: m.samples[0].value for m in MeteringCollector().collect()}
    assert metrics["llmp_reservations_active"] == 0 and metrics["llmp_usage_stream_pending"] == 3
    assert usage_stream_flush() == 3
    assert UsageRecord.objects.filter(status="expired").count() == 3


def test_the_django_cache_works_across_slots(on_redis_cluster: list[str]) -> None:
    cache.set_many({"a": 1, "b": {"two": 2}, "c": "three"}, timeout=60)
    assert cache.get_many(["a", "b", "c", "missing"]) == {"a": 1, "b": {"two": 2}, "c": "three"}
    assert cache.incr("a", 4) == 5
    assert cache.add("c", "other") is False
    cache.delete_many(["a", "b"])
    assert cache.get_many(["a", "b", "c"]) == {"c": "three"}


def test_requests_per_minute_counted_by_the_middleware_on_a_cluster(
    alice: Tenant, on_redis_cluster: list[str]
) -> None:
    alice.organization.requests_per_minute = 2
    alice.organization.save()
    statuses = [alice.client().get("/api/v1/me/").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_a_revoked_key_is_refused_by_every_process_within_a_second(
    alice: Tenant, on_redis_cluster: list[str], start_web_server: Any
) -> None:
    servers = [start_web_server(workers=1, threads=4), start_web_server(workers=1, threads=4)]
    for base in servers:  # each process has resolved the key and holds it
        for _ in range(3):
            assert get_status(f"{base}/api/v1/me/", alice.secret) == 200
    api_key_revoke(api_key=alice.api_key)
    revoked_at = time.monotonic()
    pending = set(servers)
    while pending and time.monotonic() - revoked_at <= 1.0:
        pending = {base for base in pending if get_status(f"{base}/api/v1/me/", alice.secret) != 401}
    assert not pending


def test_a_cluster_that_cannot_be_reached_is_a_503_to_retry(
    alice: Tenant, openai_backend: str, settings: Any, monkeypatch: Any
) -> None:
    """redis-py's cluster client says it cannot reach any node with RedisClusterException,
    which is not a RedisError: it must still read as the shared store being down."""
    if redis_server_missing():
        pytest.skip("needs redis-server (CI installs it)")
    cluster = LocalRedisCluster()  # its ports are free, and nothing listens on them yet
    use_redis_cluster(cluster.nodes, settings=settings, monkeypatch=monkeypatch)
    client = alice.client()
    client.raise_request_exception = False
    response = client.post("/api/v1/generate/", BODY, format="json")
    assert_error_shape(response, status=503, code="store_unavailable")
    assert response["Retry-After"] == "1"


def test_a_settlement_the_cluster_cannot_take_waits_for_it(
    alice: Tenant, openai_backend: str, settings: Any, monkeypatch: Any
) -> None:
    """A cluster lost between a request's admission and its settlement: the settlement is
    kept for the keeper to retry (a lost one would be a request never charged), and the next
    request is a 503."""
    if redis_server_missing():
        pytest.skip("needs redis-server (CI installs it)")
    cluster = LocalRedisCluster()
    cluster.start()
    try:
        use_redis_cluster(cluster.nodes, settings=settings, monkeypatch=monkeypatch)
        alice.organization.token_quota = 1_000
        alice.organization.save()
        assert alice.client().post("/api/v1/generate/", BODY, format="json").status_code == 200
        reservation = usage_services.quota_reserve(
            context=alice.context(), end_user=None, endpoint="generate", model="m", request_id="r", amount=50
        )
    finally:
        cluster.stop()
    reservation.settle(prompt_tokens=5, completion_tokens=7)
    assert usage_services._keeper.pending() == 1
    client = alice.client()
    client.raise_request_exception = False
    assert_error_shape(
        client.post("/api/v1/generate/", BODY, format="json"), status=503, code="store_unavailable"
    )


@pytest.mark.parametrize("tls", [False, True], ids=["password", "password-and-tls"])
def test_a_cluster_that_asks_for_a_password_and_tls(
    alice: Tenant, openai_backend: str, settings: Any, monkeypatch: Any, tls: bool
) -> None:
    """As a managed cluster asks: the password (and TLS, with certificates verified against the
    CA given) reach every node the client finds; a wrong password is the store being down."""
    if redis_server_missing():
        pytest.skip("needs redis-server (CI installs it)")
    cluster = LocalRedisCluster(password="a-long-cluster-password", tls=tls)
    cluster.start()
    try:
        use_redis_cluster(cluster.nodes, settings=settings, monkeypatch=monkeypatch)
        settings.REDIS_CLUSTER_PASSWORD = "a-long-cluster-password"
        settings.REDIS_CLUSTER_TLS = tls
        settings.REDIS_CLUSTER_TLS_CA_FILE = str(cluster.ca_file) if tls else ""
        alice.organization.token_quota = 1_000
        alice.organization.save()
        assert alice.client().post("/api/v1/generate/", BODY, format="json").status_code == 200
        assert any(":organization:" in key for key in _ledger_keys())  # admission went through it
        (budget,) = [b for b in alice.client().get("/api/v1/me/").json()["budgets"] if "quota" in b["name"]]
        assert budget["used"] > 0

        settings.REDIS_CLUSTER_PASSWORD = "not-the-password"
        use_redis_cluster(cluster.nodes, settings=settings, monkeypatch=monkeypatch)  # a new cache client
        client = alice.client()
        client.raise_request_exception = False
        refused = client.post("/api/v1/generate/", BODY, format="json")
        assert_error_shape(refused, status=503, code="store_unavailable")
    finally:
        cluster.stop()
