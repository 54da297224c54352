"""Values exchanged between the inference engine and its callers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # below 1e-5 (sampling.GREEDY_BELOW_TEMPERATURE) => greedy
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError("temperature must be a finite number >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | None = None
    # Chat messages ({"role", "content"}); rendered with the tokenizer's chat template when it
    # has one, else as "role: content" lines.
    messages: tuple[dict[str, str], ...] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of prompt and messages is required")


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # "stop" | "length"; "cancelled" only in GenerationStream.partial_result() of a closed stream.
    finish_reason: str
    model: str


@dataclass(frozen=True)
class StreamChunk:
    text: str  # new text since the previous chunk


@dataclass(frozen=True)
class EngineStatus:
    state: str  # "idle" | "loading" | "ready" | "failed"
    backend: str  # "local" | "openai"
    model: str
    device: str
    error: str | None
    active_requests: int
    queued_requests: int
    max_batch_size: int
    context_length: int | None


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ModelLoadError(EngineError):
    """The model or tokenizer could not be loaded."""


class ModelNotFound(ModelLoadError):
    """No model exists at the configured path or in the local Hugging Face cache."""


class EngineUnavailable(EngineError):
    """The model is still loading after the wait budget, or its loading failed."""


class GenerationFailed(EngineError):
    """One request's generation failed inside a batch (its sampling raised, or the model's scores
    for it were NaN); the other requests of the batch went on."""


class UpstreamError(EngineError):
    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        # None when the upstream server could not be reached at all.
        self.status_code = status_code


class ContextLengthExceeded(EngineError):
    def __init__(self, *, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        super().__init__(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the model's "
            f"context length ({context_length})"
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


def ensure_fits_context(*, prompt_tokens: int, max_tokens: int, context_length: int | None) -> None:
    if context_length is not None and prompt_tokens + max_tokens > context_length:
        raise ContextLengthExceeded(
            prompt_tokens=prompt_tokens, max_tokens=max_tokens, context_length=context_length
        )
