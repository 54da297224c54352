from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from inference.engine import (
    EngineConfig,
    GenerationRequest,
    GenerationResult,
    LLMHandler,
    SamplingParams,
    StreamChunk,
    UpstreamError,
)
from inference.engine.tokens import tiktoken_encoding

CHAT = GenerationRequest(
    messages=({"role": "user", "content": "Say hello"},),
    params=SamplingParams(temperature=0.2, top_p=0.9, max_tokens=20, stop=("END",), seed=7),
)


@dataclass
class FakeUpstream:
    """A scripted OpenAI-compatible server: answers `failures` with `failure_status` first."""

    pieces: list[str] = field(default_factory=lambda: ["Hel", "lo", " there"])
    failures: list[int] = field(default_factory=list)
    send_usage: bool = True
    finish_reason: str = "stop"
    received: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        self.received.append((handler.path, body, handler.headers.get("Authorization", "")))
        if self.failures:
            status = self.failures.pop(0)
            self._send(handler, status, "application/json", b'{"error": {"message": "busy"}}')
        elif body["stream"]:
            self._send(handler, 200, "text/event-stream", self._events(body))
        else:
            self._send(handler, 200, "application/json", json.dumps(self._completion(body)).encode())

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = "".join(self.pieces)
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason}
        if "messages" in body:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        answer: dict[str, Any] = {"choices": [choice]}
        if self.send_usage:
            answer["usage"] = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        return answer

    def _events(self, body: dict[str, Any]) -> bytes:
        chat = "messages" in body
        events: list[dict[str, Any]] = []
        for piece in self.pieces:
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            events.append({"choices": [{**choice, "finish_reason": None}]})
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]})
        if self.send_usage and body.get("stream_options", {}).get("include_usage"):
            events.append({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3}})
        lines = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
        return "".join(lines).encode()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, content_type: str, payload: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture
def upstream() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            fake.answer(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def openai_handler(base_url: str, **overrides: Any) -> LLMHandler:
    fields: dict[str, Any] = {
        "backend": "openai",
        "model": "upstream-model",
        "base_url": base_url,
        "api_key": "sk-test",
        "retry_backoff_s": 0.01,
        "request_timeout_s": 5,
    }
    return LLMHandler(EngineConfig(**{**fields, **overrides}))


def test_chat_request_is_forwarded_and_usage_reported(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream

    result = openai_handler(base_url, served_model_name="public-name").generate(CHAT)

    assert result == GenerationResult(
        text="Hello there", prompt_tokens=11, completion_tokens=3, finish_reason="stop", model="public-name"
    )
    path, body, authorization = fake.received[0]
    assert (path, authorization) == ("/v1/chat/completions", "Bearer sk-test")
    assert body == {
        "model": "upstream-model",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 20,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
        "stream": False,
    }


def test_prompt_request_uses_the_completions_endpoint(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    fake.finish_reason = "length"

    result = openai_handler(base_url).generate(GenerationRequest(prompt="Once"))

    assert (result.text, result.finish_reason, result.model) == ("Hello there", "length", "upstream-model")
    assert fake.received[0][0] == "/v1/completions"
    assert fake.received[0][1]["prompt"] == "Once"


def test_missing_usage_is_counted_with_tiktoken(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    fake.send_usage = False
    encoding = tiktoken_encoding("cl100k_base")

    result = openai_handler(base_url).generate(GenerationRequest(prompt="Once upon a time"))

    assert result.prompt_tokens == len(encoding.encode("Once upon a time"))
    assert result.completion_tokens == len(encoding.encode("Hello there"))


def test_server_errors_are_retried_until_success(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    fake.failures = [503, 502]

    result = openai_handler(base_url, max_retries=2).generate(CHAT)

    assert result.text == "Hello there"
    assert len(fake.received) == 3


def test_server_errors_beyond_max_retries_raise(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    fake.failures = [503, 503, 503]

    with pytest.raises(UpstreamError) as caught:
        openai_handler(base_url, max_retries=1).generate(CHAT)

    assert caught.value.status_code == 503
    assert len(fake.received) == 2


def test_client_errors_are_not_retried(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    fake.failures = [400]

    with pytest.raises(UpstreamError, match="busy") as caught:
        openai_handler(base_url).generate(CHAT)

    assert caught.value.status_code == 400
    assert len(fake.received) == 1


def test_unreachable_upstream_raises_without_status() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    with pytest.raises(UpstreamError) as caught:
        openai_handler(f"http://127.0.0.1:{closed_port}/v1", max_retries=1).generate(CHAT)

    assert caught.value.status_code is None


def test_stream_passes_chunks_through_with_upstream_usage(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    fake.failures = [503]

    with openai_handler(base_url).stream(CHAT) as stream:
        events = list(stream)

    assert events == [
        StreamChunk(text="Hel"),
        StreamChunk(text="lo"),
        StreamChunk(text=" there"),
        GenerationResult(
            text="Hello there",
            prompt_tokens=11,
            completion_tokens=3,
            finish_reason="stop",
            model="upstream-model",
        ),
    ]
    body = fake.received[-1][1]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_stream_refused_upstream_raises_before_returning(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    fake.failures = [429]
    llm = openai_handler(base_url)

    with pytest.raises(UpstreamError) as caught:
        llm.stream(CHAT)

    assert caught.value.status_code == 429
    assert llm.status().active_requests == 0


def test_stream_without_usage_counts_locally(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    fake.send_usage = False

    events = list(openai_handler(base_url).stream(GenerationRequest(prompt="Once")))

    final = events[-1]
    assert isinstance(final, GenerationResult)
    assert (final.prompt_tokens, final.completion_tokens) == (1, 2)


def test_closed_stream_reports_what_it_received(upstream: tuple[FakeUpstream, str]) -> None:
    _, base_url = upstream
    llm = openai_handler(base_url)

    stream = llm.stream(GenerationRequest(prompt="Once"))
    first = next(stream)
    stream.close()

    assert first == StreamChunk(text="Hel")
    assert list(stream) == []
    partial = stream.partial_result()
    assert (partial.text, partial.finish_reason) == ("Hel", "cancelled")
    assert llm.status().active_requests == 0


def test_openai_backend_is_ready_without_loading(upstream: tuple[FakeUpstream, str]) -> None:
    _, base_url = upstream
    llm = openai_handler(base_url)

    llm.warm_up()
    llm.count_tokens("wait for the backend")
    status = llm.status()

    assert (status.state, status.backend, status.device, status.model) == (
        "ready",
        "openai",
        "remote",
        "upstream-model",
    )
    assert status.context_length is None


def test_a_configured_context_length_stands_for_the_upstream_s(upstream: tuple[FakeUpstream, str]) -> None:
    _, base_url = upstream
    llm = openai_handler(base_url, context_length=4096)
    assert llm.context_length() is None  # not loaded yet

    llm.count_tokens("wait for the backend")

    assert llm.context_length() == llm.status().context_length == 4096
    with pytest.raises(ValueError, match="context_length"):
        EngineConfig(backend="openai", context_length=0)
