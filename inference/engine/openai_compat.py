"""Backend that forwards requests to an OpenAI-compatible server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from inference.engine import http, spans
from inference.engine.observe import EngineObserver, NoObserver
from inference.engine.stream import GenerationStream
from inference.engine.tokens import tiktoken_encoding
from inference.engine.types import (
    GenerationRequest,
    GenerationResult,
    StreamChunk,
    UpstreamError,
)

# A health check's limit: a server that needs longer for one token is not back yet.
_PROBE_TIMEOUT_S = 5.0


class OpenAIBackend:
    kind = "openai"
    device = "remote"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        served_name: str,
        request_timeout_s: float,
        max_retries: int,
        retry_backoff_s: float,
        observer: EngineObserver | None = None,
    ) -> None:
        if not base_url:
            raise ValueError("the openai backend needs a base_url")
        self.model_name = served_name
        # The upstream batches; what is seen here is its answer: the first streamed token, and
        # the whole generation (a plain answer's first token cannot be told apart from its end).
        self._observer: EngineObserver = observer or NoObserver()
        self._upstream_model = model
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = http.Client(base_url=base_url, headers=headers, timeout=request_timeout_s)
        self._lock = threading.Lock()
        self._active = 0
        # Built here so that its one-off cost falls in warm-up rather than in a request.
        tiktoken_encoding()

    def count_tokens(self, text: str) -> int:
        return len(tiktoken_encoding().encode(text, disallowed_special=()))

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        if request.messages is None:
            return self.count_tokens(request.prompt or "")
        # OpenAI's published accounting for chat models: each message is wrapped in 3 tokens,
        # and 3 more prime the assistant's reply.
        return 3 + sum(
            3 + self.count_tokens(m.get("role", "")) + self.count_tokens(m.get("content", ""))
            for m in request.messages
        )

    def context_length(self) -> int | None:
        return None

    def load(self) -> tuple[int, int]:
        with self._lock:
            return self._active, 0

    def generate(self, request: GenerationRequest) -> GenerationResult:
        is_chat = request.messages is not None
        started = time.perf_counter()
        traced = spans.recording()
        started_ns = time.time_ns() if traced else 0
        error: BaseException | None = None
        self._track(+1)
        try:
            response = self._send(request, stream=False)
            try:
                body = response.json()
                choice = body["choices"][0]
                text = choice["message"]["content"] if is_chat else choice["text"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise UpstreamError(
                    f"malformed upstream response: {exc}", status_code=response.status_code
                ) from exc
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._track(-1)
            if traced:
                spans.span_record(
                    "engine.upstream",
                    start_ns=started_ns,
                    end_ns=time.time_ns(),
                    attributes={"llm.model": self.model_name, "llm.stream": False},
                    error=error,
                )
        result = self._result(
            request=request,
            text=text or "",
            finish_reason=choice.get("finish_reason"),
            usage=body.get("usage"),
        )
        self._observer.generation_finished(
            model=self.model_name,
            seconds=time.perf_counter() - started,
            completion_tokens=result.completion_tokens,
        )
        return result

    def start(self, request: GenerationRequest) -> GenerationStream:
        """Connects before returning, so that an upstream that is down or refuses the request
        raises here rather than in the middle of the caller's response."""
        started = time.perf_counter()
        self._track(+1)
        try:
            response = self._send(request, stream=True)
        except BaseException:
            self._track(-1)
            raise
        return GenerationStream(
            _UpstreamStream(backend=self, request=request, response=response, started=started)
        )

    def shutdown(self) -> None:
        self._client.close()

    def probe(self) -> bool:
        """A one-token completion is answered: a server that lists its models but fails its
        completions is not back. A 4xx other than 429 (this upstream has no chat route, say)
        still shows a server that answers."""
        payload = {
            "model": self._upstream_model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        }
        try:
            status = self._client.status_of("/chat/completions", payload, timeout=_PROBE_TIMEOUT_S)
        except http.TransportErrors:
            return False
        return status < 500 and status not in (408, 429)

    def _send(self, request: GenerationRequest, *, stream: bool) -> http.AnyResponse:
        """POST the request, retrying connection failures and 5xx answers with exponential
        backoff. Streams are only retried before their body starts."""
        path, payload = self._payload(request, stream=stream)
        error = UpstreamError("no attempt made")
        for attempt in range(self._max_retries + 1):
            if attempt:
                time.sleep(self._retry_backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.post(path, payload, stream=stream)
            except http.TransportErrors as exc:
                error = UpstreamError(f"upstream request failed: {exc!r}")
                continue
            if response.is_success:
                return response
            error = _status_error(response)
            if response.status_code < 500:
                raise error
        raise error

    def _payload(self, request: GenerationRequest, *, stream: bool) -> tuple[str, dict[str, Any]]:
        params = request.params
        payload: dict[str, Any] = {
            "model": self._upstream_model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": stream,
        }
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.seed is not None:
            payload["seed"] = params.seed
        if stream:
            payload["stream_options"] = {"include_usage": True}
        if request.messages is not None:
            payload["messages"] = list(request.messages)
            return "/chat/completions", payload
        payload["prompt"] = request.prompt
        return "/completions", payload

    def _result(
        self,
        *,
        request: GenerationRequest,
        text: str,
        finish_reason: str | None,
        usage: dict[str, Any] | None,
    ) -> GenerationResult:
        usage = usage or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        return GenerationResult(
            text=text,
            prompt_tokens=(
                prompt_tokens if isinstance(prompt_tokens, int) else self.count_prompt_tokens(request)
            ),
            completion_tokens=(
                completion_tokens if isinstance(completion_tokens, int) else self.count_tokens(text)
            ),
            finish_reason="length" if finish_reason == "length" else "stop",
            model=self.model_name,
        )

    def _track(self, change: int) -> None:
        with self._lock:
            self._active += change


class _UpstreamStream:
    """Passes an upstream server-sent-event stream through as StreamChunks."""

    def __init__(
        self,
        *,
        backend: OpenAIBackend,
        request: GenerationRequest,
        response: http.AnyResponse,
        started: float,
    ) -> None:
        self._backend = backend
        self._started = started
        self._request = request
        self._response = response
        self._events = _sse_data(response)
        self._text_parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._closed = False

    def next_event(self) -> StreamChunk | GenerationResult:
        is_chat = self._request.messages is not None
        try:
            for data in self._events:
                self._usage = data.get("usage") or self._usage
                for choice in data.get("choices") or []:
                    self._finish_reason = choice.get("finish_reason") or self._finish_reason
                    piece = (choice.get("delta") or {}).get("content") if is_chat else choice.get("text")
                    if piece:
                        if not self._text_parts:
                            self._backend._observer.first_token(
                                model=self._backend.model_name, seconds=time.perf_counter() - self._started
                            )
                        self._text_parts.append(piece)
                        return StreamChunk(text=piece)
        except http.TransportErrors as exc:
            self._close()
            raise UpstreamError(f"upstream stream broke off: {exc!r}") from exc
        except BaseException:
            self._close()
            raise
        self._close()
        result = self._backend._result(
            request=self._request,
            text="".join(self._text_parts),
            finish_reason=self._finish_reason,
            usage=self._usage,
        )
        self._backend._observer.generation_finished(
            model=result.model,
            seconds=time.perf_counter() - self._started,
            completion_tokens=result.completion_tokens,
        )
        return result

    def cancel(self) -> None:
        self._close()

    def partial_result(self) -> GenerationResult:
        text = "".join(self._text_parts)
        return GenerationResult(
            text=text,
            prompt_tokens=self._backend.count_prompt_tokens(self._request),
            completion_tokens=self._backend.count_tokens(text),
            finish_reason="cancelled",
            model=self._backend.model_name,
        )

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._response.close()
            self._backend._track(-1)


def _sse_data(response: http.AnyResponse) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError as exc:
            raise UpstreamError(f"malformed upstream stream event: {data[:200]!r}") from exc
    # Every OpenAI-compatible server ends a stream with [DONE]: without it, the upstream died.
    raise UpstreamError("the upstream stream ended before [DONE]")


def _status_error(response: http.AnyResponse) -> UpstreamError:
    body = response.read().decode("utf-8", errors="replace")
    return UpstreamError(
        f"upstream answered {response.status_code}: {body[:500]}", status_code=response.status_code
    )
