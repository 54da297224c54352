"""The per-process cache of resolved keys: used only while invalidations are heard, never
keeps an entry read while one arrived, and a revocation reaches every server process."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.conf import settings

from accounts.keycache import LocalKeyCache
from accounts.services import api_key_revoke
from tests.conftest import Tenant, get_status


def test_entry_read_while_an_invalidation_arrived_is_not_kept(settings) -> None:
    settings.REDIS_URL = "redis://unused"
    cache = LocalKeyCache()
    cache.clear(live=True)
    cache._pid = __import__("os").getpid()  # no subscriber thread in this unit test
    generation = cache.generation()
    cache.drop(["sk-abc"])  # arrives between the shared-cache read and the put
    cache.put("sk-abc", {"stale": True}, generation)
    assert cache.get("sk-abc") is None
    cache.put("sk-abc", {"fresh": True}, cache.generation())
    assert cache.get("sk-abc") == {"fresh": True}


def test_nothing_is_served_while_the_subscription_is_not_live(settings) -> None:
    settings.REDIS_URL = "redis://unused"
    cache = LocalKeyCache()
    cache._pid = __import__("os").getpid()
    cache.clear(live=True)
    cache.put("sk-abc", {"entry": 1}, cache.generation())
    cache.clear(live=False)  # the connection to Redis was lost
    cache.put("sk-abc", {"entry": 2}, cache.generation())
    assert cache.get("sk-abc") is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not settings.REDIS_URL, reason="several processes share state only through Redis (CI sets REDIS_URL)"
)
def test_revoking_a_key_reaches_every_server_process(alice: Tenant, start_web_server: Any) -> None:
    base = start_web_server(workers=2, threads=4)
    for _ in range(20):  # both workers have resolved and kept the key
        assert get_status(f"{base}/api/v1/me/", alice.secret) == 200
    api_key_revoke(api_key=alice.api_key)
    statuses = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        statuses.append(get_status(f"{base}/api/v1/me/", alice.secret))
    assert statuses[-20:] == [401] * 20, statuses
    assert statuses.count(200) <= 2, statuses  # at most while the message is in flight


@pytest.mark.django_db
def test_an_entry_from_a_version_that_cached_fewer_fields_is_read_again_once(alice: Tenant) -> None:
    """During a rolling upgrade an older process may write a key's shared entry without a field
    this version caches (`budget_lineage`); served as is, that field would be loaded from the
    database on every request. It is read again and stored whole instead."""
    from django.core.cache import cache

    from accounts.keycache import entry_key, local_key_cache
    from accounts.selectors import api_key_resolve

    prefix = alice.api_key.prefix
    assert api_key_resolve(prefix=prefix) is not None  # fills the shared entry
    entry = cache.get(entry_key(prefix))
    del entry["api_key"]["budget_lineage"]
    cache.set(entry_key(prefix), entry, timeout=60)
    local_key_cache.clear()
    resolved = api_key_resolve(prefix=prefix)
    assert resolved is not None and "budget_lineage" not in resolved.api_key.get_deferred_fields()
    assert "budget_lineage" in cache.get(entry_key(prefix))["api_key"]
