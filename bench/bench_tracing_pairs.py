"""Tracing's cost on the production server, measured in many pairs (issue 15).

    python bench/bench_tracing_pairs.py [--pairs 6] [--seconds 15] [--connections 32] [--out FILE]

Each pair measures the gateway with tracing off and on (OTLP to a closed port, as
`bench_gateway.py --tracing`), each time with a fresh web server and Celery worker, and alternates
which comes first (off-on, on-off, ...). For each phase: the gateway's requests per second under
wrk, and the CPU that the web server's processes (every worker, every thread: the span export
too) and the Celery worker spent per request, read from /proc. Then the medians over pairs.

On this 2-core machine the throughput of the same code moves by 10-20 % from one run to the next,
so one pair says little; the median over many, and the CPU per request beside it (which the other
processes' load moves less), are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/llm_bench_tracing_pairs")
os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")

from bench.bench_gateway import BODY, _env, _prepare_database, _tracing_env, python_load  # noqa: E402
from bench.common import free_port, save, start, start_fake_upstream, stop, web_command, worker_command, wrk  # noqa: E402


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    listing = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _phase(
    tracing: str, *, env: dict[str, str], secret: str, seconds: int, connections: int, load: object
) -> dict[str, float]:
    port = free_port()
    env = {**env, **_tracing_env(tracing)}
    web = start(
        web_command(port=port, workers=2, threads=64), env=env, health=f"http://127.0.0.1:{port}/healthz"
    )
    worker = start(worker_command(), env=env)
    try:
        gateway = f"http://127.0.0.1:{port}/v1/chat/completions"
        auth = {"Authorization": f"Bearer {secret}"}
        # Warm up every worker, then let the records of the warm-up settle.
        load(gateway, connections=connections, seconds=min(3, seconds), body=BODY, headers=auth)  # type: ignore[operator]
        time.sleep(min(2, seconds))
        web_pids, worker_pids = _tree(web.pid), _tree(worker.pid)
        web_before, worker_before = _cpu_seconds(web_pids), _cpu_seconds(worker_pids)
        result = load(gateway, connections=connections, seconds=seconds, body=BODY, headers=auth)  # type: ignore[operator]
        web_cpu, worker_cpu = _cpu_seconds(web_pids) - web_before, _cpu_seconds(worker_pids) - worker_before
    finally:
        stop(web, worker)
    requests = max(1.0, result.requests_per_second * seconds)
    return {
        "requests_per_second": round(result.requests_per_second, 1),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "web_cpu_ms_per_request": round(1000 * web_cpu / requests, 3),
        "worker_cpu_ms_per_request": round(1000 * worker_cpu / requests, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--out", type=Path, help="write the results here instead of bench/results/")
    args = parser.parse_args()
    load = wrk if args.load == "wrk" else python_load
    upstream, upstream_url = start_fake_upstream()
    env = _env(upstream_url)
    try:
        secret = _prepare_database(env)
        pairs = []
        for index in range(args.pairs):
            order = ("off", "on") if index % 2 == 0 else ("on", "off")
            pair = {
                tracing: _phase(
                    tracing,
                    env=env,
                    secret=secret,
                    seconds=args.seconds,
                    connections=args.connections,
                    load=load,
                )
                for tracing in order
            }
            off, on = pair["off"], pair["on"]
            costs = {
                "throughput": 1 - on["requests_per_second"] / off["requests_per_second"],
                "web_cpu": on["web_cpu_ms_per_request"] / off["web_cpu_ms_per_request"] - 1,
            }
            pairs.append({"order": list(order), **pair, "cost": {k: round(v, 4) for k, v in costs.items()}})
            print(
                f"pair {index + 1} ({'-'.join(order)}): {off['requests_per_second']:.0f} -> "
                f"{on['requests_per_second']:.0f} req/s ({100 * costs['throughput']:+.1f} %), web CPU "
                f"{off['web_cpu_ms_per_request']:.2f} -> {on['web_cpu_ms_per_request']:.2f} ms/request "
                f"({100 * costs['web_cpu']:+.1f} %)",
                flush=True,
            )
        summary = {
            "connections": args.connections,
            "seconds": args.seconds,
            "pairs": pairs,
            "median_throughput_cost": round(statistics.median(p["cost"]["throughput"] for p in pairs), 4),
            "median_web_cpu_cost": round(statistics.median(p["cost"]["web_cpu"] for p in pairs), 4),
        }
        print(
            f"median over {len(pairs)} pairs: throughput {100 * summary['median_throughput_cost']:+.1f} %, "
            f"web CPU per request {100 * summary['median_web_cpu_cost']:+.1f} %",
            flush=True,
        )
        if args.out:
            args.out.write_text(json.dumps(summary, indent=2))
            print(args.out)
        else:
            print(save("tracing-pairs", summary))
    finally:
        stop(upstream)


if __name__ == "__main__":
    main()
