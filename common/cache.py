"""Django's Redis cache backend, without its per-operation cost.

Django's `RedisCacheClient.get_client` builds a new `redis.Redis` object for every cache
operation, and building one copies about 170 response callbacks: some 0.1 ms of CPU per
operation, on every request's authentication. A `redis.Redis` object is thread-safe and shares
its connection pool, so one per pool serves every thread of the process."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class ReusingRedisCacheClient(RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        # django-stubs do not declare these private members of RedisCacheClient.
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client


class ReusingRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient
