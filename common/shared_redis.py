"""The Redis that processes coordinate through: one server (`REDIS_URL`) or a Redis Cluster
(`REDIS_CLUSTER_NODES`, which wins when both are set; REDIS_URL then serves Celery only).

The budget ledger, the rate limits, the key cache's invalidations and the Django cache all get
their client here, so one setting moves all of them. On a cluster, a Lua script and a
transaction reach one hash slot only: the ledger tags its keys so that each script's keys share
a slot (`usage.ledger.keys`); plain pipelines (`transaction=False`) may span slots, redis-py
splits them by node; PUBLISH cannot be pipelined (redis-py refuses it) and reaches every node
of the cluster from any one."""

from __future__ import annotations

from functools import cache
from typing import Any

import redis
from django.conf import settings
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

SharedRedis = redis.Redis | RedisCluster

# What a call to the shared store raises when it fails. The cluster client's own failures (no
# node reachable, a slot without a node while the cluster heals) are RedisClusterException,
# which is not a RedisError: a handler that caught RedisError alone let them through as a 500,
# or lost a settlement that it should have deferred.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


def shared_redis_configured() -> bool:
    """Whether processes share state (else each one keeps its own: the embedded default)."""
    return bool(settings.REDIS_CLUSTER_NODES or settings.REDIS_URL)


def cluster_configured() -> bool:
    return bool(settings.REDIS_CLUSTER_NODES)


def redis_client() -> SharedRedis:
    """The process's client (thread-safe, one connection pool per node)."""
    nodes = tuple(settings.REDIS_CLUSTER_NODES)
    # The cluster's credentials only on a cluster: one Redis (the common case, on every
    # request's path) reads two settings, as before.
    return _client(settings.REDIS_URL, nodes, tuple(cluster_options().items()) if nodes else ())


@cache
def _client(url: str, nodes: tuple[str, ...], options: tuple[tuple[str, Any], ...]) -> SharedRedis:
    # Keyed by the settings (`options` too, though `redis_client_new` reads them itself), so a
    # test that overrides them gets a client of its own.
    return redis_client_new(url=url, nodes=nodes)


def cluster_options() -> dict[str, Any]:
    """The cluster's credentials and TLS (REDIS_CLUSTER_USERNAME, _PASSWORD, _TLS, _TLS_CA_FILE),
    as `RedisCluster` takes them: every node gets the same."""
    options: dict[str, Any] = {}
    if settings.REDIS_CLUSTER_USERNAME:
        options["username"] = settings.REDIS_CLUSTER_USERNAME
    if settings.REDIS_CLUSTER_PASSWORD:
        options["password"] = settings.REDIS_CLUSTER_PASSWORD
    if settings.REDIS_CLUSTER_TLS:
        options["ssl"] = True
        if settings.REDIS_CLUSTER_TLS_CA_FILE:
            options["ssl_ca_certs"] = settings.REDIS_CLUSTER_TLS_CA_FILE
    return options


def redis_client_new(
    *, url: str | None = None, nodes: tuple[str, ...] | None = None, **options: Any
) -> SharedRedis:
    """A client of its own (a subscriber that holds a connection open), with redis-py's
    connection `options`."""
    nodes = tuple(settings.REDIS_CLUSTER_NODES) if nodes is None else nodes
    if nodes:
        return RedisCluster(startup_nodes=cluster_nodes(nodes), **cluster_options(), **options)
    return redis.Redis.from_url(settings.REDIS_URL if url is None else url, **options)


def cluster_nodes(addresses: tuple[str, ...] | list[str]) -> list[ClusterNode]:
    nodes = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        nodes.append(ClusterNode(host, int(port)))
    return nodes
