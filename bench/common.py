"""Helpers shared by the HTTP benchmarks: starting servers, running wrk, reading its output."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{url}: server exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(url) from None
            time.sleep(0.2)


def reset_services(*, database_url: str, redis_url: str) -> None:
    """An empty PostgreSQL database and an empty Redis database for a benchmark run."""
    subprocess.run(
        ["redis-cli", "-n", redis_url.rsplit("/", 1)[-1], "FLUSHDB"], check=True, capture_output=True
    )
    name = database_url.rsplit("/", 1)[-1]
    for statement in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", statement], check=True, capture_output=True
        )


def start(
    args: list[str], *, env: dict[str, str] | None = None, health: str | None = None
) -> subprocess.Popen:
    # BENCH_LOG=<file> keeps the servers' output, to see why a run had errors.
    log = open(os.environ["BENCH_LOG"], "ab") if os.environ.get("BENCH_LOG") else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log)
    if health:
        wait_http(health, process)
    return process


def start_fake_upstream(*, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`bench/fake_upstream.py` under uvicorn on a free port (with `env`: its FAKE_UPSTREAM_*
    settings); returns it and its /v1 base URL."""
    port = free_port()
    process = start(
        [
            str(BIN / "uvicorn"),
            "bench.fake_upstream:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        health=f"http://127.0.0.1:{port}/v1/models",
    )
    return process, f"http://127.0.0.1:{port}/v1"


def worker_command() -> list[str]:
    """A Celery worker with beat, one job at a time (what the web benchmarks run beside the
    server: the flush and expiry)."""
    return [
        str(BIN / "celery"),
        "-A",
        "platform.celery:app",
        "worker",
        "-B",
        "--loglevel",
        "WARNING",
        "--concurrency",
        "1",
        "--pool",
        "solo",
    ]


def web_command(*, port: int, workers: int, threads: int) -> list[str]:
    """The production web server (`python -m platform.web`: granian), on 127.0.0.1:port."""
    return [
        str(BIN / "python"),
        "-m",
        "platform.web",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass(frozen=True)
class LoadResult:
    connections: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    body: dict | None = None,
    headers: dict[str, str] | None = None,
    threads: int = 1,
) -> LoadResult:
    """Runs wrk (Debian's package) against `url` and parses requests/s and latency percentiles."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    lines = []
    if body is not None:
        lines.append('wrk.method = "POST"')
        lines.append(f"wrk.body = {json.dumps(json.dumps(body))}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    for name, value in (headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    lines.append(
        "function response(status, headers, body) if status ~= 200 then failed = (failed or 0) + 1 end end"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines))
    try:
        output = subprocess.run(
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(connections),
                "-d",
                f"{seconds}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return LoadResult(connections=connections, requests_per_second=rps, p50_ms=p50, p99_ms=p99, errors=errors)


def save(name: str, payload: dict) -> Path:
    path = ROOT / "bench" / "results" / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)))
    return path
