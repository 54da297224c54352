"""The key cache: resolved API keys, so that authenticating a request costs no database query.

Two levels. The shared cache (Redis) holds each key's entry for `API_KEY_CACHE_SECONDS`, with
the key's version: a random token that every invalidation replaces. A process that fills an
entry reads the version before it reads the database and stores the entry with it; an entry is
served only while its version is the current one. So a fill that read the database before a
revocation committed, and stores its entry after the revocation's invalidation, stores it under
a version that is gone: it is never served, and no racing fill can put a revoked key back.

Each process also keeps entries in memory (`LocalKeyCache`), served only while it is sure to
hear every invalidation: `invalidate` publishes each invalidated key prefix on a Redis channel,
and a subscriber thread in every process drops it from here. While that subscription is not
confirmed (starting, or the connection to Redis lost) the local cache is bypassed and lookups
go to the shared cache, so a lost subscription degrades speed, never correctness. An entry read
from the shared cache while an invalidation arrives is not kept (`generation`), and every entry
also ages out after `API_KEY_LOCAL_CACHE_SECONDS`. Without Redis (one process) the shared cache
is already local and this cache stays off.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.cache import cache

from common.shared_redis import cluster_configured, redis_client, redis_client_new, shared_redis_configured

logger = logging.getLogger(__name__)

CHANNEL_SUFFIX = "auth:invalidate"


def _channel() -> str:
    return f"{settings.CACHE_KEY_PREFIX}:{CHANNEL_SUFFIX}"


class LocalKeyCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._generation = 0
        self._live = False
        self._pid: int | None = None

    def enabled(self) -> bool:
        return shared_redis_configured() and settings.API_KEY_LOCAL_CACHE_SECONDS > 0

    def get(self, prefix: str) -> dict[str, Any] | None:
        if not self.enabled():
            return None
        self._ensure_listening()
        found = self._entries.get(prefix)
        if found is None or not self._live or found[0] < time.monotonic():
            return None
        return found[1]

    def generation(self) -> int:
        return self._generation

    def put(self, prefix: str, entry: dict[str, Any], generation: int) -> None:
        """Keeps `entry` unless an invalidation arrived since `generation` was read."""
        if not self.enabled():
            return
        with self._lock:
            if self._live and generation == self._generation:
                self._entries[prefix] = (time.monotonic() + settings.API_KEY_LOCAL_CACHE_SECONDS, entry)

    def drop(self, prefixes: Iterable[str]) -> None:
        with self._lock:
            self._generation += 1
            for prefix in prefixes:
                self._entries.pop(prefix, None)

    def clear(self, *, live: bool | None = None) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            if live is not None:
                self._live = live

    def _ensure_listening(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked child starts its own subscriber
            self._live = False
            self._entries.clear()
        threading.Thread(target=self._listen, name="api-key-invalidations", daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                # On a cluster, the node that serves the channel's slot: a message published
                # on any node reaches the subscribers of every node.
                client = redis_client_new(socket_timeout=None, health_check_interval=10)
                pubsub = client.pubsub()
                pubsub.subscribe(_channel())
                while True:
                    message = pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self.clear(live=True)  # from here on, no invalidation is missed
                    elif message["type"] == "message":
                        self.drop([message["data"].decode()])
            except Exception:
                logger.warning(
                    "API key invalidations: subscription lost, bypassing the local cache", exc_info=True
                )
            self.clear(live=False)
            time.sleep(1)


local_key_cache = LocalKeyCache()


def entry_key(prefix: str) -> str:
    return f"auth:apikey:{prefix}"


def version_key(prefix: str) -> str:
    return f"auth:apikey-version:{prefix}"


# The version of a key never invalidated, or invalidated longer ago than a version lives.
INITIAL_VERSION = "0"


def _version_seconds() -> int:
    # A fill would have to stall this long between its database read and its store for its
    # entry to outlive the version that invalidated it. Only invalidated keys have a version, so
    # however many unknown keys callers try, they leave nothing in the cache.
    return max(86_400, 10 * settings.API_KEY_CACHE_SECONDS)


def shared_get(prefix: str) -> tuple[dict[str, Any] | None, str]:
    """The shared entry of `prefix` if it is current (one round trip), and the version that an
    entry filled from a database read made after this call must carry."""
    if settings.API_KEY_CACHE_SECONDS <= 0:
        return None, INITIAL_VERSION
    found = cache.get_many([entry_key(prefix), version_key(prefix)])
    version = found.get(version_key(prefix)) or INITIAL_VERSION
    entry = found.get(entry_key(prefix))
    if entry is not None and entry.get("version") == version:
        return entry, version
    return None, version


def shared_put(prefix: str, entry: dict[str, Any], *, version: str) -> None:
    """Stores an entry read from the database after `version` was read from `shared_get`."""
    if settings.API_KEY_CACHE_SECONDS > 0:
        cache.set(entry_key(prefix), {**entry, "version": version}, timeout=settings.API_KEY_CACHE_SECONDS)


def invalidate(prefixes: list[str]) -> None:
    """Every process reads these keys from the database on their next lookup: each gets a new
    version (so no entry stored before, or by a fill that read the database before, is served
    again) and every process is told to drop its own entries (this one at once)."""
    if not prefixes:
        return
    cache.set_many(
        {version_key(prefix): secrets.token_hex(8) for prefix in prefixes}, timeout=_version_seconds()
    )
    publish(prefixes)


def publish(prefixes: list[str]) -> None:
    """Tells every process to drop these keys (this one at once)."""
    local_key_cache.drop(prefixes)
    if not shared_redis_configured() or not prefixes:
        return
    client = redis_client()
    if cluster_configured():  # redis-py refuses PUBLISH in a cluster pipeline
        for prefix in prefixes:
            client.publish(_channel(), prefix)
        return
    pipe = client.pipeline(transaction=False)
    for prefix in prefixes:
        pipe.publish(_channel(), prefix)
    pipe.execute()
