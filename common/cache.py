"""Django's Redis cache backend, without its per-operation cost, and on a Redis Cluster.

Django's `RedisCacheClient.get_client` builds a new `redis.Redis` object for every cache
operation, and building one copies about 170 response callbacks: some 0.1 ms of CPU per
operation, on every request's authentication. A `redis.Redis` object is thread-safe and shares
its connection pool, so one per pool serves every thread of the process."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.cluster import RedisCluster

from common.shared_redis import cluster_nodes, cluster_options


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


class ClusterRedisCacheClient(RedisCacheClient):
    """Django's Redis cache on a Redis Cluster (`REDIS_CLUSTER_NODES`): one `RedisCluster`
    client, and the operations on several keys, which Django sends as one command (MGET,
    MSET), split by slot; they are not atomic across keys (no caller here needs them to be:
    the key cache reads an entry and its version in either order, `accounts.keycache`)."""

    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self._nodes = servers
        self._cluster: RedisCluster | None = None

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        if self._cluster is None:
            self._cluster = RedisCluster(startup_nodes=cluster_nodes(self._nodes), **cluster_options())
        return self._cluster

    # django-stubs do not declare RedisCacheClient's `_serializer`.
    def get_many(self, keys: Any) -> dict[Any, Any]:
        keys = list(keys)
        values = self.get_client().mget_nonatomic(keys)
        loads = self._serializer.loads  # type: ignore[attr-defined]
        return {k: loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set_many(self, data: Any, timeout: Any) -> None:
        if timeout == 0:
            self.delete_many(list(data))
            return
        pipeline = self.get_client().pipeline(transaction=False)
        for key, value in data.items():
            pipeline.set(key, self._serializer.dumps(value), ex=timeout)  # type: ignore[attr-defined]
        pipeline.execute()


class ClusterRedisCache(RedisCache):
    def __init__(self, server: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = ClusterRedisCacheClient
