"""Issue 4's benchmark: what the platform's pipeline costs.

(a) an OpenAI-compatible upstream that answers at once (bench/fake_upstream.py), called directly;
(b) the same upstream behind the platform's /v1/chat/completions with the openai backend and
    everything on: authentication, rate limits, token counting, budget reservation and
    settlement, a usage record (flushed to PostgreSQL by a Celery worker with beat).
Both at 1 and 32 connections with wrk, in the same run, on PostgreSQL and Redis, under the
production server setup (`python -m platform.web`: granian, 2 workers x 64 threads), or
gunicorn's gthread workers for comparison (`--server gunicorn`).

    python bench/bench_gateway.py [--seconds 15] [--workers 2] [--threads 64] [--server production|gunicorn]
        [--tracing off|on|both] [--load wrk|python]

`--tracing both` measures the gateway four times in the same run, with tracing off, on, on and
off (OTEL_TRACES_EXPORTER=otlp to a closed port on loopback: every span is made, batched and its
export attempted, as in production with a collector down), and reports the throughput ratio of
the means (bench/results/gateway-tracing.json). `--load python` replaces wrk with a small threaded
client (for a check on a machine without wrk; its figures are not comparable with wrk's).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BIN,
    ROOT,
    LoadResult,
    free_port,
    reset_services,
    save,
    start,
    start_fake_upstream,
    stop,
    web_command,
    worker_command,
    wrk,
)

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/llm_platform_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
BODY = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "Explain Python classes"}],
    "max_tokens": 16,
}


def _env(upstream: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DJANGO_SETTINGS_MODULE="platform.settings.production",
        DJANGO_SECRET_KEY="bench-" + "x" * 40,
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        CACHE_KEY_PREFIX="bench",
        LLM_BACKEND="openai",
        LLM_MODEL="fake-model",
        LLM_BASE_URL=upstream,
        LOG_LEVEL="WARNING",
        DJANGO_SECURE_COOKIES="false",
        DJANGO_SECURE_SSL_REDIRECT="false",  # plain HTTP on loopback
    )
    return env


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "python"), "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        # The command's own error, not only its exit status.
        raise SystemExit(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def _prepare_database(env: dict[str, str]) -> str:
    reset_services(database_url=DATABASE_URL, redis_url=REDIS_URL)
    _manage(env, "migrate", "--noinput")
    _manage(env, "create_org", "bench")
    # Limits and a budget that the run never reaches: everything is checked, nothing refused.
    _manage(env, "set_rate_limit", "--org", "bench", "--rpm", "10000000", "--tpm", "1000000000")
    _manage(env, "set_budget", "--org", "bench", "--tokens", "100000000000", "--period", "month")
    secret = _manage(env, "create_api_key", "--org", "bench").strip().splitlines()[-1]
    _manage(
        env,
        "set_budget",
        "--org",
        "bench",
        "--key",
        secret[:12],
        "--tokens",
        "100000000000",
        "--period",
        "day",
    )
    return secret


def _prepare_refused_tenant(env: dict[str, str]) -> str:
    """A tenant over its limit: one request per minute, so admission refuses (429) all but the
    first of each minute."""
    _manage(env, "create_org", "refused")
    _manage(env, "set_rate_limit", "--org", "refused", "--rpm", "1", "--tpm", "-1")
    return _manage(env, "create_api_key", "--org", "refused").strip().splitlines()[-1]


def python_load(
    url: str,
    *,
    connections: int,
    seconds: int,
    body: dict | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """wrk's measurement with Python threads, one keep-alive connection each."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode() if body is not None else None
    sent = {"Content-Type": "application/json", **(headers or {})}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        mine: list[float] = []
        failed = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                connection.request("POST" if payload else "GET", parts.path, body=payload, headers=sent)
                response = connection.getresponse()
                response.read()
                failed += response.status != 200
            except (OSError, http.client.HTTPException):
                failed += 1
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
            mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client) for _ in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()

    def at(quantile: float) -> float:
        if not latencies:
            return 0.0
        return round(latencies[min(len(latencies) - 1, int(quantile * len(latencies)))] * 1000, 3)

    return LoadResult(
        connections=connections,
        requests_per_second=round(len(latencies) / elapsed, 1),
        p50_ms=at(0.5),
        p99_ms=at(0.99),
        errors=errors[0],
    )


def _tracing_env(tracing: str) -> dict[str, str]:
    if tracing == "off":
        return {"OTEL_TRACES_EXPORTER": "none"}
    # Nothing listens there: exports fail as with a collector down, after the spans are made.
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_SERVICE_NAME": "llm-platform-bench",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--server", choices=("production", "gunicorn"), default="production")
    parser.add_argument("--tracing", choices=("off", "on", "both"), default="off")
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--out", type=Path, help="write the results here instead of bench/results/")
    args = parser.parse_args()

    upstream, upstream_url = start_fake_upstream()
    env = _env(upstream_url)
    secret = _prepare_database(env)
    refused_secret = _prepare_refused_tenant(env)
    load = wrk if args.load == "wrk" else python_load
    try:
        if args.tracing != "both":
            results = _measure(
                args=args,
                env={**env, **_tracing_env(args.tracing)},
                upstream_url=upstream_url,
                secret=secret,
                refused_secret=refused_secret,
                load=load,
            )
            results["tracing"] = args.tracing
            _write(args.out, "gateway" if args.tracing == "off" else "gateway-tracing-on", results)
            return
        # Off, on, on, off: the database and Redis fill up as the run goes (usage records, their
        # flush), which made a second phase slower than a first whatever it measured; in this
        # order a steady drift weighs on both settings alike.
        phases: list[tuple[str, dict[str, object]]] = []
        for tracing in ("off", "on", "on", "off"):
            print(f"tracing {tracing}", flush=True)
            measured = _measure(
                args=args,
                env={**env, **_tracing_env(tracing)},
                upstream_url=upstream_url,
                secret=secret,
                refused_secret=refused_secret,
                load=load,
            )
            phases.append((tracing, measured))
        summary: dict[str, object] = {"load": args.load, "order": [t for t, _ in phases]}
        summary["phases"] = [measured for _, measured in phases]
        for key in ("c1", "c32", "refused_c32"):
            rates = {
                tracing: [m[key]["gateway"].requests_per_second for t, m in phases if t == tracing]  # type: ignore[index]
                for tracing in ("off", "on")
            }
            off, on = (statistics.fmean(rates[t]) for t in ("off", "on"))
            ratio = on / off if off else 0.0
            summary[f"{key}_throughput_on_over_off"] = round(ratio, 3)
            summary[f"{key}_requests_per_second"] = {t: [round(r, 1) for r in rates[t]] for t in rates}
            print(
                f"{key:>12}  tracing off {' / '.join(f'{r:.0f}' for r in rates['off'])} req/s, "
                f"on {' / '.join(f'{r:.0f}' for r in rates['on'])} req/s: {100 * (1 - ratio):+.1f}% cost",
                flush=True,
            )
        _write(args.out, "gateway-tracing", summary)
    finally:
        stop(upstream)


def _write(out: Path | None, name: str, results: dict[str, object]) -> None:
    if out is None:
        print(save(name, results))
    else:
        out.write_text(json.dumps(results, indent=2, default=lambda o: vars(o)))
        print(out)


def _measure(
    *,
    args: argparse.Namespace,
    env: dict[str, str],
    upstream_url: str,
    secret: str,
    refused_secret: str,
    load: Any,
) -> dict[str, object]:
    """Starts the web server and a worker on `env`, measures, stops them."""
    port = free_port()
    if args.server == "production":
        command = web_command(port=port, workers=args.workers, threads=args.threads)
    else:  # the previous setup, for comparison: gunicorn's gthread workers
        command = [
            str(BIN / "gunicorn"),
            "platform.wsgi:application",
            "--worker-class",
            "gthread",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.workers),
            "--threads",
            str(args.threads),
        ]
    web = start(command, env=env, health=f"http://127.0.0.1:{port}/healthz")
    worker = start(worker_command(), env=env)
    results: dict[str, object] = {
        "server": args.server,
        "workers": args.workers,
        "threads": args.threads,
        "seconds": args.seconds,
    }
    try:
        auth = {"Authorization": f"Bearer {secret}"}
        gateway = f"http://127.0.0.1:{port}/v1/chat/completions"
        load(gateway, connections=32, seconds=3, body=BODY, headers=auth)  # warm up both, every worker
        load(f"{upstream_url}/chat/completions", connections=4, seconds=2, body=BODY)
        for connections in (1, 32):
            direct = load(
                f"{upstream_url}/chat/completions", connections=connections, seconds=args.seconds, body=BODY
            )
            behind = load(gateway, connections=connections, seconds=args.seconds, body=BODY, headers=auth)
            results[f"c{connections}"] = {
                "direct": direct,
                "gateway": behind,
                "added_p50_ms": round(behind.p50_ms - direct.p50_ms, 3),
            }
            print(
                f"{connections:>3} connections  direct: {direct.requests_per_second:8.0f} req/s "
                f"p50 {direct.p50_ms:6.2f} ms p99 {direct.p99_ms:6.2f} ms | gateway: "
                f"{behind.requests_per_second:8.0f} req/s p50 {behind.p50_ms:6.2f} ms p99 {behind.p99_ms:6.2f} ms "
                f"errors {behind.errors} | added p50 {behind.p50_ms - direct.p50_ms:.2f} ms",
                flush=True,
            )
        # What a refused request costs: admission answers 429 before the view does any work.
        refused = load(
            gateway,
            connections=32,
            seconds=args.seconds,
            body=BODY,
            headers={"Authorization": f"Bearer {refused_secret}"},
        )
        cores = os.cpu_count() or 1
        results["refused_c32"] = {
            "gateway": refused,
            "per_core_requests_per_second": round(refused.requests_per_second / cores, 1),
        }
        print(
            f" 32 connections  refused (429): {refused.requests_per_second:8.0f} req/s "
            f"({refused.requests_per_second / cores:.0f} per core) p50 {refused.p50_ms:6.2f} ms "
            f"non-2xx {refused.errors}",
            flush=True,
        )
        records = _manage(
            env, "shell", "-c", "from usage.models import UsageRecord; print(UsageRecord.objects.count())"
        ).strip()
        results["usage_records_written"] = int(records.splitlines()[-1])
        print(f"usage records in PostgreSQL after the run: {records}")
    finally:
        stop(web, worker)
    return results


if __name__ == "__main__":
    main()
