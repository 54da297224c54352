"""LLMHandler: the one entry point the serving layer calls."""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Protocol

from inference.engine.observe import EngineObserver, NoObserver
from inference.engine.stream import GenerationStream
from inference.engine.types import (
    EngineStatus,
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
)


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "local"  # "local" | "openai"
    # local: a directory or a model id already in the local HF cache (never downloaded);
    # openai: the upstream model name.
    model: str = ""
    served_model_name: str | None = None  # default: basename of the model directory
    device: str = "auto"  # auto => cuda if available else cpu
    dtype: str = "auto"
    max_batch_size: int = 32
    # torch intra-op threads of the scheduler thread; 0 keeps torch's default (one per core). On
    # a CPU shared with other busy processes, 1 avoids threads spinning while waiting for each other.
    torch_threads: int = 0
    load_timeout_s: float = 120.0  # how long a request waits for a loading model
    base_url: str = ""
    api_key: str = ""
    request_timeout_s: float = 120.0
    max_retries: int = 2
    retry_backoff_s: float = 0.5  # first retry delay; doubles on each further retry
    # The model's context in tokens where the backend cannot tell (an openai upstream does not
    # say); a backend that knows its model's own (a local model's config) keeps that one.
    context_length: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("local", "openai"):
            raise ValueError(f"unknown backend {self.backend!r}")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.context_length is not None and self.context_length < 1:
            raise ValueError("context_length must be >= 1")


class Backend(Protocol):
    kind: str
    model_name: str
    device: str

    def count_tokens(self, text: str) -> int: ...

    def count_prompt_tokens(self, request: GenerationRequest) -> int: ...

    def context_length(self) -> int | None: ...

    def load(self) -> tuple[int, int]:
        """(active, queued) request counts."""

    def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def start(self, request: GenerationRequest) -> GenerationStream: ...

    def shutdown(self) -> None: ...

    def probe(self) -> bool:
        """Whether the model answers now (a health check)."""


class LLMHandler:
    """Thread-safe facade over one backend, loaded lazily in a background thread.

    Requests that arrive while the model loads wait for it, up to `load_timeout_s`.
    """

    def __init__(self, config: EngineConfig, *, observer: EngineObserver | None = None) -> None:
        self._config = config
        self._observer: EngineObserver = observer or NoObserver()
        self._lock = threading.Lock()
        self._state = "idle"
        self._error: str | None = None
        self._loaded = threading.Event()
        self._backend: Backend | None = None

    def warm_up(self) -> None:
        with self._lock:
            if self._state != "idle":
                return
            self._state = "loading"
        threading.Thread(target=self._load, name="llm-loader", daemon=True).start()

    def status(self) -> EngineStatus:
        with self._lock:
            state, error, backend = self._state, self._error, self._backend
        active, queued = backend.load() if backend else (0, 0)
        return EngineStatus(
            state=state,
            backend=self._config.backend,
            model=self.served_model_name,
            device=backend.device if backend else self._expected_device(),
            error=error,
            active_requests=active,
            queued_requests=queued,
            max_batch_size=self._config.max_batch_size,
            context_length=self.context_length(),
        )

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self._ready_backend().generate(request)

    def stream(self, request: GenerationRequest) -> GenerationStream:
        """Chunks, then one GenerationResult. See GenerationStream for closing early."""
        return self._ready_backend().start(request)

    def wait_ready(self) -> None:
        """Loads the model if needed and waits for it (EngineUnavailable past `load_timeout_s`)."""
        self._ready_backend()

    def count_tokens(self, text: str) -> int:
        return self._ready_backend().count_tokens(text)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return self._ready_backend().count_prompt_tokens(request)

    def context_length(self) -> int | None:
        """The backend's own, else the configured one; None until the model is loaded, and for
        an upstream that does not tell when none is configured."""
        with self._lock:
            backend = self._backend
        if backend is None:
            return None
        own = backend.context_length()
        return own if own is not None else self._config.context_length

    def probe(self) -> bool:
        """A health check that never waits for a model to load: False while it loads or after
        its loading failed, else the backend's own check."""
        self.warm_up()
        with self._lock:
            backend = self._backend
        return backend is not None and backend.probe()

    def shutdown(self) -> None:
        """Stop the backend; waiting and running requests fail with EngineUnavailable. A later
        request loads the model again."""
        with self._lock:
            loading = self._state == "loading"
        if loading:
            self._loaded.wait()
        with self._lock:
            backend, self._backend = self._backend, None
            if self._state == "ready":
                self._state = "idle"
                self._loaded.clear()
        if backend:
            backend.shutdown()

    def _ready_backend(self) -> Backend:
        self.warm_up()
        if not self._loaded.wait(self._config.load_timeout_s):
            raise EngineUnavailable(
                f"model {self._served_name()!r} is still loading after {self._config.load_timeout_s:g}s"
            )
        with self._lock:
            backend, error = self._backend, self._error
        if backend is None:
            raise EngineUnavailable(f"model {self._served_name()!r} is unavailable: {error}")
        return backend

    def _load(self) -> None:
        try:
            backend = self._build_backend()
        except Exception as exc:
            with self._lock:
                self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"
        else:
            with self._lock:
                self._state, self._error, self._backend = "ready", None, backend
        self._loaded.set()

    def _build_backend(self) -> Backend:
        config = self._config
        if config.backend == "openai":
            from inference.engine.openai_compat import OpenAIBackend

            return OpenAIBackend(
                base_url=config.base_url,
                api_key=config.api_key,
                model=config.model,
                served_name=self._served_name(),
                request_timeout_s=config.request_timeout_s,
                max_retries=config.max_retries,
                retry_backoff_s=config.retry_backoff_s,
                observer=self._observer,
            )
        # Imported here so that processes which never serve a local model skip loading torch.
        from inference.engine.local import LocalBackend

        return LocalBackend(
            model=config.model,
            served_name=self._served_name(),
            device=config.device,
            dtype=config.dtype,
            max_batch_size=config.max_batch_size,
            torch_threads=config.torch_threads,
            observer=self._observer,
        )

    @functools.cached_property
    def served_model_name(self) -> str:
        """The name clients send as `model` (fixed by the configuration)."""
        return self._served_name()

    def _served_name(self) -> str:
        config = self._config
        if config.served_model_name:
            return config.served_model_name
        if config.backend == "local" and os.path.isdir(config.model):
            return os.path.basename(os.path.normpath(config.model))
        return config.model

    def _expected_device(self) -> str:
        # Resolving "auto" needs torch, which is only imported once the model loads.
        return "remote" if self._config.backend == "openai" else self._config.device
