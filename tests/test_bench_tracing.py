"""The tracing benchmarks run: bench/bench_gateway.py --tracing both measures the gateway with
tracing off, on, on and off (OTLP to a closed port) in one run; bench/bench_tracing_pairs.py
measures pairs in alternating order, with the CPU per request. Tiny here (a second per
measurement, Python's load instead of wrk); the figures come from a quiet machine
(BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.skipif(
    not (settings.REDIS_URL and os.environ.get("DATABASE_URL", "").startswith("postgres")),
    reason="the benchmark runs on PostgreSQL and Redis (CI sets both)",
)


def test_gateway_bench_measures_tracing_off_and_on_in_one_run(tmp_path: Path) -> None:
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    log = tmp_path / "servers.log"
    out = tmp_path / "gateway-tracing.json"
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "BENCH_DATABASE_URL": f"{base}/llm_bench_tracing_test",
        # Its own Redis database: the benchmark empties it first.
        "BENCH_REDIS_URL": settings.REDIS_URL.rsplit("/", 1)[0] + "/11",
        "BENCH_LOG": str(log),
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    result = subprocess.run(
        [
            str(BIN / "python"),
            "bench/bench_gateway.py",
            "--seconds",
            "1",
            "--workers",
            "1",
            "--threads",
            "4",
            "--tracing",
            "both",
            "--load",
            "python",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["order"] == ["off", "on", "on", "off"]
    for tracing, phase in zip(summary["order"], summary["phases"], strict=True):
        for connections in ("c1", "c32"):
            gateway = phase[connections]["gateway"]
            assert gateway["requests_per_second"] > 0 and gateway["errors"] == 0, (tracing, gateway)
    assert summary["c32_throughput_on_over_off"] > 0
    assert "tracing off" in result.stdout and "% cost" in result.stdout
    # With tracing on, the web server made spans and tried to export them to the closed port.
    assert "export" in log.read_text().lower(), log.read_text()[-2000:]


def test_tracing_pairs_bench_measures_both_orders_and_the_cpu_per_request(tmp_path: Path) -> None:
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    out = tmp_path / "tracing-pairs.json"
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "BENCH_DATABASE_URL": f"{base}/llm_bench_pairs_test",
        "BENCH_REDIS_URL": settings.REDIS_URL.rsplit("/", 1)[0] + "/12",
    }
    command = [str(BIN / "python"), "bench/bench_tracing_pairs.py", "--pairs", "2", "--seconds", "1"]
    result = subprocess.run(
        [*command, "--connections", "4", "--load", "python", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [pair["order"] for pair in summary["pairs"]] == [["off", "on"], ["on", "off"]]
    for pair in summary["pairs"]:
        for tracing in ("off", "on"):
            phase = pair[tracing]
            assert phase["requests_per_second"] > 0 and phase["errors"] == 0, (tracing, phase)
            assert phase["web_cpu_ms_per_request"] > 0, (tracing, phase)
    assert "median over 2 pairs" in result.stdout
