"""The engine tells its observer about first tokens, finished generations, its queue and its
batch, with no Django around it; the Prometheus observer turns that into the exported metrics."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import REGISTRY

from inference.engine import GenerationRequest, GenerationResult, LLMHandler, SamplingParams, StreamChunk
from inference.metrics import PrometheusEngineObserver
from tests.engine.conftest import tiny_config


class RecordingObserver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.first_tokens: list[tuple[str, float]] = []
        self.finished: list[tuple[str, float, int]] = []
        self.depths: list[int] = []
        self.batch_sizes: list[int] = []

    def first_token(self, *, model: str, seconds: float) -> None:
        with self._lock:
            self.first_tokens.append((model, seconds))

    def generation_finished(self, *, model: str, seconds: float, completion_tokens: int) -> None:
        with self._lock:
            self.finished.append((model, seconds, completion_tokens))

    def queue_depth(self, *, depth: int) -> None:
        with self._lock:
            self.depths.append(depth)

    def batch_step(self, *, size: int) -> None:
        with self._lock:
            self.batch_sizes.append(size)


def _request(prompt: str, max_tokens: int) -> GenerationRequest:
    # min_tokens is not a parameter: a greedy tiny model may stop early, so the test reads
    # completion_tokens from the results instead of assuming max_tokens.
    return GenerationRequest(prompt=prompt, params=SamplingParams(temperature=0, max_tokens=max_tokens))


def test_local_engine_reports_each_generation_its_queue_and_its_batch(tiny_model_dir: Path) -> None:
    observer = RecordingObserver()
    llm = LLMHandler(tiny_config(tiny_model_dir, max_batch_size=2), observer=observer)
    try:
        llm.wait_ready()
        prompts = ["the quick brown fox", "hello world", "once upon a time", "the lazy dog"]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda p: llm.generate(_request(p, 6)), prompts))
    finally:
        llm.shutdown()
    model = llm.served_model_name
    assert len(observer.first_tokens) == 4
    assert all(name == model and seconds > 0 for name, seconds in observer.first_tokens)
    assert sorted(tokens for _, _, tokens in observer.finished) == sorted(
        r.completion_tokens for r in results
    )
    # Each generation's end comes after its first token (same clock, same start).
    assert min(s for _, s, _ in observer.finished) >= min(s for _, s in observer.first_tokens)
    # Four requests for two places: some waited, and the queue ends empty.
    assert max(observer.depths) >= 1 and observer.depths[-1] == 0
    assert observer.batch_sizes and max(observer.batch_sizes) == 2 and min(observer.batch_sizes) >= 1
    # Every decode step's rows add up to the tokens decoded after each prefill's first one.
    assert sum(observer.batch_sizes) >= sum(r.completion_tokens - 1 for r in results)


def test_a_stream_reports_one_first_token_and_one_finished_generation(tiny_model_dir: Path) -> None:
    observer = RecordingObserver()
    llm = LLMHandler(tiny_config(tiny_model_dir), observer=observer)
    try:
        with llm.stream(_request("hello world", 4)) as stream:
            events = list(stream)
    finally:
        llm.shutdown()
    result = events[-1]
    assert isinstance(result, GenerationResult)
    assert all(isinstance(event, StreamChunk) for event in events[:-1])
    assert len(observer.first_tokens) == 1 and len(observer.finished) == 1
    assert observer.finished[0][2] == result.completion_tokens


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_prometheus_observer_moves_the_exported_metrics() -> None:
    observer = PrometheusEngineObserver()
    before = {
        "ttft": _value("llmp_time_to_first_token_seconds_count", {"model": "m-test"}),
        "ttft_sum": _value("llmp_time_to_first_token_seconds_sum", {"model": "m-test"}),
        "gen": _value("llmp_generation_seconds_count", {"model": "m-test"}),
        "batch": _value("llmp_engine_batch_size_count"),
        "batch_sum": _value("llmp_engine_batch_size_sum"),
    }
    observer.first_token(model="m-test", seconds=0.2)
    observer.generation_finished(model="m-test", seconds=1.5, completion_tokens=9)
    observer.batch_step(size=3)
    observer.batch_step(size=5)
    observer.queue_depth(depth=7)
    assert _value("llmp_time_to_first_token_seconds_count", {"model": "m-test"}) == before["ttft"] + 1
    assert _value("llmp_time_to_first_token_seconds_sum", {"model": "m-test"}) == before["ttft_sum"] + 0.2
    assert _value("llmp_generation_seconds_count", {"model": "m-test"}) == before["gen"] + 1
    assert _value("llmp_engine_batch_size_count") == before["batch"] + 2
    assert _value("llmp_engine_batch_size_sum") == before["batch_sum"] + 8
    assert _value("llmp_engine_queue_depth") == 7
    observer.queue_depth(depth=0)
