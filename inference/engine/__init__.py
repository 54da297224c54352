"""Inference engine: a Django-free library that serves text generation and embeddings."""

from inference.engine.handler import EngineConfig, LLMHandler
from inference.engine.stream import GenerationStream
from inference.engine.types import (
    ContextLengthExceeded,
    EngineError,
    EngineStatus,
    EngineUnavailable,
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    ModelLoadError,
    ModelNotFound,
    SamplingParams,
    StreamChunk,
    UpstreamError,
)

__all__ = [
    "ContextLengthExceeded",
    "EngineConfig",
    "EngineError",
    "EngineStatus",
    "EngineUnavailable",
    "GenerationFailed",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStream",
    "LLMHandler",
    "ModelLoadError",
    "ModelNotFound",
    "SamplingParams",
    "StreamChunk",
    "UpstreamError",
]
