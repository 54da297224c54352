"""Issue 16's benchmark: one model served by one upstream, then by two, then by two of which one
dies in the middle of the run.

Each upstream is `bench/fake_upstream.py` with a capacity, as a GPU server has one: it serves
`--upstream-slots` completions at once, each taking `--upstream-ms` (the others wait). The
gateway is the production setup (`python -m platform.web`, PostgreSQL, Redis, a Celery worker
flushing usage) with a registry file (LLM_MODELS_FILE) naming one or two deployments. wrk drives
/v1/chat/completions at 32 connections.

    python bench/bench_routing.py [--seconds 15] [--upstream-ms 100] [--upstream-slots 4]

- `one` / `two`: throughput with one deployment, then two (least outstanding requests);
- `failover`: two deployments, the second killed (SIGKILL) a third of the way into the run: the
  requests it held fail over to the first; errors counts every non-2xx and socket error wrk saw.
Results in bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gateway import BODY, _env, _manage, _prepare_database  # noqa: E402
from bench.common import (  # noqa: E402
    LoadResult,
    free_port,
    save,
    start,
    start_fake_upstream,
    stop,
    web_command,
    worker_command,
    wrk,
)

CONNECTIONS = 32


def _upstream(*, delay_ms: int, slots: int) -> tuple[Any, str]:
    env = {**os.environ, "FAKE_UPSTREAM_DELAY_MS": str(delay_ms), "FAKE_UPSTREAM_CONCURRENCY": str(slots)}
    return start_fake_upstream(env=env)


def _registry(urls: list[str], folder: Path) -> Path:
    path = folder / f"models-{len(urls)}.yaml"
    deployments = "\n".join(f"      - base_url: {url}" for url in urls)
    path.write_text(
        "router:\n  cooldown_seconds: 30\n  health_check_seconds: 1\n"
        f"models:\n  - name: fake-model\n    deployments:\n{deployments}\n"
    )
    return path


def _serve(env: dict[str, str]) -> tuple[list[Any], str]:
    port = free_port()
    web = start(
        web_command(port=port, workers=2, threads=64), env=env, health=f"http://127.0.0.1:{port}/healthz"
    )
    worker = start(worker_command(), env=env)
    return [web, worker], f"http://127.0.0.1:{port}/v1/chat/completions"


def _warm_up(url: str, headers: dict[str, str]) -> None:
    """Until the server answers quickly: each worker loads its router and tokenizer on its first
    requests, which would otherwise count in the measurement."""
    quick = 0
    deadline = time.monotonic() + 120
    while quick < 10 and time.monotonic() < deadline:
        request = urllib.request.Request(
            url, data=json.dumps(BODY).encode(), headers={**headers, "Content-Type": "application/json"}
        )
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        quick = quick + 1 if time.monotonic() - started < 1 else 0


def _run(
    name: str, *, env: dict[str, str], registry: Path, secret: str, seconds: int, during: Any = None
) -> LoadResult:
    processes, url = _serve({**env, "LLM_MODELS_FILE": str(registry)})
    auth = {"Authorization": f"Bearer {secret}"}
    try:
        _warm_up(url, auth)
        wrk(url, connections=CONNECTIONS, seconds=3, body=BODY, headers=auth)  # every worker thread
        timer = threading.Timer(seconds / 3, during) if during else None
        if timer:
            timer.start()
        result = wrk(url, connections=CONNECTIONS, seconds=seconds, body=BODY, headers=auth)
        if timer:
            timer.join()
    finally:
        stop(*processes)
    print(
        f"{name:>9}: {result.requests_per_second:7.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
        f"p99 {result.p99_ms:6.1f} ms  errors {result.errors}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    # 40 req/s per upstream: well below what the gateway serves even on a busy 2-core machine,
    # so that what is measured is the spread over the upstreams.
    parser.add_argument("--upstream-ms", type=int, default=100)
    parser.add_argument("--upstream-slots", type=int, default=4)
    args = parser.parse_args()

    first, first_url = _upstream(delay_ms=args.upstream_ms, slots=args.upstream_slots)
    second, second_url = _upstream(delay_ms=args.upstream_ms, slots=args.upstream_slots)
    env = _env(first_url)
    secret = _prepare_database(env)
    capacity = 1000 / args.upstream_ms * args.upstream_slots
    print(
        f"each upstream: {args.upstream_slots} at once x {args.upstream_ms} ms = {capacity:.0f} req/s at most"
    )
    results: dict[str, Any] = {
        "seconds": args.seconds,
        "connections": CONNECTIONS,
        "upstream_ms": args.upstream_ms,
        "upstream_slots": args.upstream_slots,
        "upstream_capacity_rps": capacity,
    }
    folder = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    try:
        results["one"] = _run(
            "one", env=env, registry=_registry([first_url], folder), secret=secret, seconds=args.seconds
        )
        two = _registry([first_url, second_url], folder)
        results["two"] = _run("two", env=env, registry=two, secret=secret, seconds=args.seconds)
        killed_at: list[float] = []

        def kill_second() -> None:
            killed_at.append(time.monotonic())
            second.kill()

        results["failover"] = _run(
            "failover", env=env, registry=two, secret=secret, seconds=args.seconds, during=kill_second
        )
        results["two_over_one"] = round(
            results["two"].requests_per_second / results["one"].requests_per_second, 3
        )
        print(f"two upstreams / one: {results['two_over_one']:.2f}x")
        records = _manage(
            env, "shell", "-c", "from usage.models import UsageRecord; print(UsageRecord.objects.count())"
        ).strip()
        results["usage_records_written"] = int(records.splitlines()[-1])
    finally:
        stop(first)
        if second.poll() is None:
            stop(second)
    print(save("routing", results))


if __name__ == "__main__":
    main()
