"""Admission on one Redis vs a Redis Cluster of three nodes (started here, on loopback ports): the
ledger's atomic step a request to a budgeted route costs (two budgets, three rate-limit windows,
the charged total) and its settlement, timed in one process, sequentially and from 16 threads.

    python bench/bench_admission.py [--requests 4000]     (BENCH_REDIS_URL: redis://127.0.0.1:6379/3)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
from redis.cluster import RedisCluster  # noqa: E402

from bench.common import save  # noqa: E402
from bench.redis_cluster import LocalRedisCluster  # noqa: E402
from common.shared_redis import SharedRedis, cluster_nodes  # noqa: E402
from usage.ledger import CLUSTER_SHARDS, Counter, KeyLayout, RedisLedger, Window  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
ORGANIZATIONS = 32
THREADS = 16
LARGE = 10**12


def _measure(client: SharedRedis, layout: KeyLayout, requests: int) -> dict[str, float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:q:"
    ledger = RedisLedger(client=client, prefix=prefix, initial_used=lambda _counter: 0, layout=layout)

    def one(index: int) -> tuple[float, float]:
        org = index % ORGANIZATIONS + 1
        tag = layout.organization_tag(org)
        counters = [
            Counter(f"{scope}:{org}:m2026-11", scope, LARGE, LARGE, 3600, org, "m2026-11")
            for scope in ("organization", "api_key")
        ]
        windows = [
            Window(f"{prefix}{tag}rl:org-rpm:{org}", LARGE, 1, 120, False),
            Window(f"{prefix}{tag}rl:key-rpm:{org}", LARGE, 1, 120, False),
            Window(f"{prefix}{tag}rl:org-tpm:{org}", LARGE, 30, 120, True),
        ]
        rid = ledger.reservation_id_new(organization_id=org)
        started = time.perf_counter()
        ledger.admit(
            reservation_id=rid,
            counters=counters,
            amount=30,
            record={"reservation_id": rid, "organization_id": org},
            ttl_seconds=120,
            windows=windows,
            charged_key=f"{tag}charged:{org}:m2026-11",
        )
        admitted = time.perf_counter()
        ledger.settle(reservation_id=rid, record_update={"completion_tokens": 5}, tokens=20)
        return admitted - started, time.perf_counter() - admitted

    for index in range(200):  # scripts loaded, counters made
        one(index)
    timings = [one(index) for index in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(requests)))
    threaded = requests / (time.perf_counter() - started)
    for key in client.scan_iter(f"{prefix}*", count=1000):
        client.delete(key)
    admits = sorted(admit for admit, _ in timings)
    settles = sorted(settle for _, settle in timings)
    return {
        "admit_p50_ms": round(admits[len(admits) // 2] * 1000, 3),
        "admit_p99_ms": round(admits[int(len(admits) * 0.99)] * 1000, 3),
        "settle_p50_ms": round(settles[len(settles) // 2] * 1000, 3),
        "sequential_per_second": round(requests / sum(a + s for a, s in timings)),
        f"threads{THREADS}_per_second": round(threaded),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    results = {"requests": args.requests, "cpus": os.cpu_count()}
    results["redis"] = _measure(redis.Redis.from_url(REDIS_URL), KeyLayout(), args.requests)
    cluster = LocalRedisCluster()
    cluster.start()
    try:
        client = RedisCluster(startup_nodes=cluster_nodes(cluster.nodes))
        results["redis_cluster"] = _measure(client, KeyLayout(shards=CLUSTER_SHARDS), args.requests)
    finally:
        cluster.stop()
    for name in ("redis", "redis_cluster"):
        print(name, results[name])
    print("saved", save("admission", results))


if __name__ == "__main__":
    main()
