"""The standalone inference service: one process that holds the model and batches the requests of
every web and Celery worker, speaking the OpenAI protocol (so the gateway reaches it with the
openai backend). A plain WSGI app with no Django, served by gunicorn with one worker and many
threads: `gunicorn 'inference.server:create_app()' --workers 1 --threads 128` (Procfile: `inference`).

Configured by the same variables as the gateway's engine: LLM_MODEL, LLM_SERVED_MODEL_NAME,
LLM_DEVICE, LLM_MAX_BATCH_SIZE, LLM_TORCH_THREADS, LLM_LOAD_TIMEOUT_SECONDS. It loads the model
at start."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference import openai_format
from inference.engine import (
    ContextLengthExceeded,
    EngineConfig,
    EngineUnavailable,
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    LLMHandler,
    SamplingParams,
    StreamChunk,
)
from inference.metrics import PrometheusEngineObserver

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_STATUS_TEXT = {
    200: "200 OK",
    400: "400 Bad Request",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


def config_from_env(environ: dict[str, str]) -> EngineConfig:
    default_model = Path(__file__).resolve().parent / "default_model"
    return EngineConfig(
        backend="local",
        model=environ.get("LLM_MODEL") or str(default_model),
        served_model_name=environ.get("LLM_SERVED_MODEL_NAME") or None,
        device=environ.get("LLM_DEVICE", "auto"),
        max_batch_size=int(environ.get("LLM_MAX_BATCH_SIZE", "32")),
        torch_threads=int(environ.get("LLM_TORCH_THREADS", "0")),
        load_timeout_s=float(environ.get("LLM_LOAD_TIMEOUT_SECONDS", "120")),
    )


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": type, "param": param, "code": code}}


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number between {low} and {high}.", name)
    return float(value)


def parse_request(body: dict[str, Any], *, chat: bool) -> GenerationRequest:
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens must be a positive integer.", "max_tokens")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise BadRequest("top_p must be greater than 0.", "top_p")
    seed = body.get("seed")
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not -(2**63) <= seed < 2**63
    ):
        raise BadRequest("seed must be a 64-bit integer.", "seed")
    if not all(isinstance(s, str) for s in stop) or len(stop) > 4 or any(len(s) > 64 for s in stop):
        raise BadRequest("stop must be at most 4 strings of at most 64 characters.", "stop")
    params = SamplingParams(
        temperature=_number(body, "temperature", 0.7, 0.0, 2.0),
        top_p=top_p,
        max_tokens=max_tokens,
        stop=stop,
        seed=seed,
    )
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list.", "messages")
        return GenerationRequest(
            messages=tuple(
                {"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in messages
            ),
            params=params,
        )
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt must be a non-empty string.", "prompt")
    return GenerationRequest(prompt=prompt, params=params)


class InferenceServer:
    def __init__(self, handler: LLMHandler) -> None:
        self.handler = handler

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            if path in ("/health", "/healthz") and method == "GET":
                status = self.handler.status()
                return self._json(start_response, 200 if status.state != "failed" else 503, vars(status))
            if path == "/metrics" and method == "GET":
                # The service listens on loopback (Procfile), beside the scraper's agent.
                payload = generate_latest()
                start_response(
                    "200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(payload)))]
                )
                return [payload]
            if path == "/v1/models" and method == "GET":
                return self._json(
                    start_response,
                    200,
                    {"object": "list", "data": [openai_format.model_card(self.handler.status().model)]},
                )
            if path in ("/v1/chat/completions", "/v1/completions"):
                if method != "POST":
                    return self._json(start_response, *_error(405, "Use POST."))
                return self._complete(environ, start_response, chat=path == "/v1/chat/completions")
            return self._json(start_response, *_error(404, f"No route {method} {path}.", code="unknown_url"))
        except BadRequest as exc:
            return self._json(start_response, *_error(400, str(exc), param=exc.param))
        except ContextLengthExceeded as exc:
            return self._json(
                start_response, *_error(400, str(exc), param="max_tokens", code="context_length_exceeded")
            )
        except EngineUnavailable as exc:
            return self._json(
                start_response, *_error(503, str(exc), type="service_unavailable", code="model_unavailable")
            )
        except GenerationFailed as exc:
            return self._json(
                start_response, *_error(500, str(exc), type="server_error", code="generation_failed")
            )

    def _complete(
        self, environ: dict[str, Any], start_response: StartResponse, *, chat: bool
    ) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise BadRequest("The body must be a JSON object.")
        requested = body.get("model")
        served = self.handler.status().model
        if requested and requested != served:
            return self._json(
                start_response,
                *_error(
                    404, f"The model '{requested}' does not exist.", param="model", code="model_not_found"
                ),
            )
        request = parse_request(body, chat=chat)
        ident = openai_format.new_id("chatcmpl" if chat else "cmpl")
        if not body.get("stream"):
            result = self.handler.generate(request)
            build = openai_format.chat_completion if chat else openai_format.completion
            return self._json(
                start_response,
                200,
                build(
                    id=ident,
                    model=result.model,
                    text=result.text,
                    finish_reason=result.finish_reason,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                ),
            )
        stream = self.handler.stream(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return _Events(stream, chat=chat, ident=ident, model=served, include_usage=include_usage)

    @staticmethod
    def _json(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
        payload = json.dumps(body).encode()
        start_response(
            _STATUS_TEXT.get(status, f"{status} Error"),
            [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
        )
        return [payload]


class _Events:
    """The SSE body. The WSGI server calls close() when the response ends or the client goes
    away; closing the engine's stream frees the sequence's batch slot."""

    def __init__(self, stream: Any, *, chat: bool, ident: str, model: str, include_usage: bool) -> None:
        self._stream = stream
        self._iterator = self._events(chat=chat, ident=ident, model=model, include_usage=include_usage)

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def close(self) -> None:
        self._stream.close()

    def _events(self, *, chat: bool, ident: str, model: str, include_usage: bool) -> Iterator[bytes]:
        def texts_then_result() -> Iterator[str | GenerationResult]:
            for event in self._stream:
                if isinstance(event, StreamChunk):
                    if event.text:
                        yield event.text
                else:
                    yield event

        return openai_format.stream_body(
            chat=chat, id=ident, model=model, include_usage=include_usage, events=texts_then_result()
        )


def create_app(environ: dict[str, str] | None = None) -> InferenceServer:
    handler = LLMHandler(
        config_from_env(dict(environ if environ is not None else os.environ)),
        observer=PrometheusEngineObserver(),
    )
    handler.warm_up()
    return InferenceServer(handler)
