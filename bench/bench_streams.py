"""Issue 3: streams must not pin a worker per idle client. 64 concurrent streaming requests
through the platform (openai backend, an upstream that sends one token every 50 ms), served by
the production setup (`python -m platform.web`: granian, 2 workers x 64 threads) against a
baseline of gunicorn's sync workers (one request per process at a time), in the same run.

    python bench/bench_streams.py [--streams 64]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gateway import _env, _prepare_database  # noqa: E402
from bench.common import BIN, free_port, save, start, start_fake_upstream, stop, web_command  # noqa: E402

TOKENS = 20  # one every 50 ms: a stream lasts about a second


def _stream(
    base: str, secret: str, results: list[tuple[float, float, int]], barrier: threading.Barrier
) -> None:
    url = urlparse(base)
    body = json.dumps(
        {
            "model": "fake-model",
            "stream": True,
            "max_tokens": TOKENS,
            "messages": [{"role": "user", "content": "SLOW_STREAM tell me"}],
        }
    )
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    barrier.wait()
    started = time.perf_counter()
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=body,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    first = None
    chunks = 0
    for line in response:
        if line.startswith(b"data: {"):
            chunks += 1
            if first is None:
                first = time.perf_counter() - started
    results.append((first or 0.0, time.perf_counter() - started, chunks))
    connection.close()


def _run(base: str, secret: str, streams: int) -> dict[str, float]:
    results: list[tuple[float, float, int]] = []
    barrier = threading.Barrier(streams)
    threads = [
        threading.Thread(target=_stream, args=(base, secret, results, barrier)) for _ in range(streams)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    firsts = sorted(r[0] for r in results)
    totals = sorted(r[1] for r in results)
    return {
        "streams": streams,
        "completed": sum(1 for r in results if r[2] >= TOKENS),
        "wall_s": round(wall, 2),
        "ttfb_p50_ms": round(statistics.median(firsts) * 1000, 1),
        "ttfb_max_ms": round(firsts[-1] * 1000, 1),
        "duration_p50_s": round(statistics.median(totals), 2),
        "duration_max_s": round(totals[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=64)
    args = parser.parse_args()
    upstream, upstream_url = start_fake_upstream()
    env = _env(upstream_url)
    secret = _prepare_database(env)
    results = {}
    try:
        for name, command in (
            (
                "granian 2 workers x 64 threads (production)",
                lambda port: web_command(port=port, workers=2, threads=64),
            ),
            (
                "gunicorn sync 2 workers (baseline)",
                lambda port: [
                    str(BIN / "gunicorn"),
                    "platform.wsgi:application",
                    "--worker-class",
                    "sync",
                    "--workers",
                    "2",
                    "--bind",
                    f"127.0.0.1:{port}",
                ],
            ),
        ):
            port = free_port()
            web = start(command(port), env=env, health=f"http://127.0.0.1:{port}/healthz")
            try:
                # A first round opens every thread's database connection and loads the engine.
                _run(f"http://127.0.0.1:{port}", secret, args.streams)
                results[name] = _run(f"http://127.0.0.1:{port}", secret, args.streams)
            finally:
                stop(web)
            print(name, results[name], flush=True)
    finally:
        stop(upstream)
    print(save("streams", results))


if __name__ == "__main__":
    main()
