from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from inference.engine import (
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
    LLMHandler,
    SamplingParams,
)
from inference.engine import local as local_module
from tests.engine.conftest import CONTEXT_LENGTH, tiny_config, wait_until

REQUEST = GenerationRequest(prompt="hello", params=SamplingParams(temperature=0, max_tokens=4))


@pytest.fixture
def load_gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Holds every local model load until the test sets the returned event."""
    gate = threading.Event()

    class GatedBackend(local_module.LocalBackend):
        def __init__(self, **kwargs: Any) -> None:
            gate.wait(timeout=30)
            super().__init__(**kwargs)

    monkeypatch.setattr(local_module, "LocalBackend", GatedBackend)
    return gate


def test_handler_loads_nothing_until_asked(tiny_model_dir: Path) -> None:
    llm = LLMHandler(tiny_config(tiny_model_dir))

    status = llm.status()

    assert status.state == "idle"
    assert status.model == "tiny-qwen"
    assert status.context_length is None
    assert llm.context_length() is None


def test_status_goes_from_loading_to_ready(tiny_model_dir: Path, load_gate: threading.Event) -> None:
    llm = LLMHandler(tiny_config(tiny_model_dir, max_batch_size=3))

    llm.warm_up()
    llm.warm_up()
    assert llm.status().state == "loading"
    load_gate.set()
    llm.count_tokens("wait for the load")
    status = llm.status()

    assert status.state == "ready"
    assert status.device == "cpu"
    assert status.error is None
    assert status.max_batch_size == 3
    assert status.context_length == CONTEXT_LENGTH == llm.context_length()
    llm.shutdown()


def test_request_during_load_waits_for_the_model(tiny_model_dir: Path, load_gate: threading.Event) -> None:
    llm = LLMHandler(tiny_config(tiny_model_dir))
    results: list[GenerationResult] = []
    caller = threading.Thread(target=lambda: results.append(llm.generate(REQUEST)))

    caller.start()
    caller.join(timeout=0.3)
    assert caller.is_alive() and llm.status().state == "loading"
    load_gate.set()
    caller.join(timeout=30)

    assert [r.completion_tokens for r in results] == [4]
    llm.shutdown()


def test_request_gives_up_after_load_timeout(tiny_model_dir: Path, load_gate: threading.Event) -> None:
    llm = LLMHandler(tiny_config(tiny_model_dir, load_timeout_s=0.2))

    with pytest.raises(EngineUnavailable, match="still loading"):
        llm.generate(REQUEST)

    load_gate.set()
    assert llm.generate(REQUEST).completion_tokens == 4
    llm.shutdown()


def test_missing_model_fails_the_load_and_the_requests(tmp_path: Path) -> None:
    llm = LLMHandler(tiny_config(tmp_path / "no-such-model"))

    with pytest.raises(EngineUnavailable, match="ModelNotFound"):
        llm.generate(REQUEST)
    status = llm.status()

    assert status.state == "failed"
    assert status.error is not None and "no-such-model" in status.error


def test_served_model_name_overrides_the_directory_name(tiny_model_dir: Path) -> None:
    llm = LLMHandler(tiny_config(tiny_model_dir, served_model_name="house-model"))

    assert llm.generate(REQUEST).model == "house-model"
    llm.shutdown()


def test_shutdown_fails_running_and_queued_requests(tiny_model_dir: Path) -> None:
    llm = LLMHandler(tiny_config(tiny_model_dir, max_batch_size=1))
    # Greedy: sampled, the running request could end at an end-of-sequence token before shutdown.
    long_request = GenerationRequest(prompt="hello", params=SamplingParams(max_tokens=2000, temperature=0))
    running = llm.stream(long_request)
    next(running)
    errors: list[Exception] = []

    def queued_call() -> None:
        try:
            llm.generate(long_request)
        except EngineUnavailable as exc:
            errors.append(exc)

    caller = threading.Thread(target=queued_call)
    caller.start()
    assert wait_until(lambda: llm.status().queued_requests == 1)
    llm.shutdown()
    caller.join(timeout=30)

    with pytest.raises(EngineUnavailable, match="shut down"):
        for _ in running:
            pass
    assert len(errors) == 1
