"""Issue 3, end to end through the HTTP API: requests/s and p50/p99 latency of
POST /api/v1/generate/ at 1 and 32 connections, with the shipped default model on the CPU, in
the production layout: the gateway (granian, 2 workers, openai backend) in front of the
inference service (one process holding the model, batching every request).

    python bench/bench_http_generate.py [--seconds 20] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gateway import _env, _prepare_database  # noqa: E402
from bench.common import BIN, ROOT, free_port, save, start, stop, web_command, wrk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default=str(ROOT / "inference" / "default_model"))
    args = parser.parse_args()

    inference_port = free_port()
    inference = start(
        [
            str(BIN / "gunicorn"),
            "inference.server:create_app()",
            "--workers",
            "1",
            "--worker-class",
            "gthread",
            "--threads",
            "64",
            "--bind",
            f"127.0.0.1:{inference_port}",
            "--timeout",
            "300",
        ],
        env={
            "PATH": str(BIN),
            "LLM_MODEL": args.model,
            "LLM_SERVED_MODEL_NAME": "default",
            "LLM_MAX_BATCH_SIZE": "32",
        },
        health=f"http://127.0.0.1:{inference_port}/health",
    )
    env = _env(f"http://127.0.0.1:{inference_port}/v1")
    env["LLM_MODEL"] = "default"
    secret = _prepare_database(env)
    port = free_port()
    web = start(
        web_command(port=port, workers=2, threads=32),
        env=env,
        health=f"http://127.0.0.1:{port}/healthz",
    )
    body = {"prompt": "Explain Python classes", "max_tokens": args.max_tokens, "temperature": 0.7}
    auth = {"Authorization": f"Bearer {secret}"}
    results: dict[str, object] = {"max_tokens": args.max_tokens, "seconds": args.seconds}
    try:
        url = f"http://127.0.0.1:{port}/api/v1/generate/"
        wrk(url, connections=4, seconds=5, body=body, headers=auth)  # warm up
        for connections in (1, 32):
            result = wrk(url, connections=connections, seconds=args.seconds, body=body, headers=auth)
            results[f"c{connections}"] = result
            print(
                f"{connections:>3} connections: {result.requests_per_second:7.2f} req/s, "
                f"{result.requests_per_second * args.max_tokens:7.0f} tokens/s, p50 {result.p50_ms:8.1f} ms, "
                f"p99 {result.p99_ms:8.1f} ms, errors {result.errors}",
                flush=True,
            )
    finally:
        stop(web, inference)
    print(save("http_generate", results))


if __name__ == "__main__":
    main()
