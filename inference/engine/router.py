"""Routing over the registry's models: each model's deployments share its load, a failed one is
retried on another and cooled down, and a model whose deployments all failed hands the request
to its fallbacks.

- **Load**: least outstanding requests (this process's count), ties taken in turn, so that two
  idle deployments alternate.
- **Failover**: a deployment that cannot be reached, times out, answers 5xx or 429, or whose
  local model failed to load, is tried no further for this request; the next candidate gets it.
  A stream fails over only before its first event reached the caller: the router waits for that
  event before it hands the stream over (only when there is somewhere else to go, so that a
  single deployment streams exactly as before). A 4xx other than 429 is the request's own fault
  and is not retried.
- **Cooldown**: the failed deployment is skipped for `cooldown_s`, or until a health check
  (a one-token completion, every `health_check_s`) answers; the other processes are told
  (`on_cooled`, `cooled_elsewhere`: `inference.cooldowns`) and skip it as long. A model with one deployment and no fallbacks is
  never cooled down: there is nowhere else to send its requests. When every deployment of a
  request's models is cooling down, the request is refused at once (`EngineUnavailable`, a 503)
  rather than sent to a server known to be down.
- **Fallbacks**: a model's `fallbacks`, in order (theirs after them), each only if the caller may
  use it and the request fits its context.

Results name the model that answered, so that usage is charged once, on the model and the
deployment that did the work."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from inference.engine.handler import LLMHandler
from inference.engine.registry import DeploymentConfig, ModelConfig, RegistryConfig
from inference.engine.stream import GenerationStream
from inference.engine.types import (
    EngineStatus,
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
    UpstreamError,
)

HandlerFactory = Callable[[ModelConfig, DeploymentConfig], LLMHandler]


class RouterObserver(Protocol):
    def attempt(self, *, model: str, deployment: str, outcome: str) -> None:
        """A request ran on a deployment: `ok`, `failed` (failed over) or `refused` (a 4xx)."""

    def outstanding(self, *, model: str, deployment: str, change: int) -> None:
        """Requests in flight on the deployment went up or down by `change`."""

    def availability(self, *, model: str, deployment: str, available: bool) -> None:
        """The deployment was cooled down, or came back."""

    def fallback(self, *, model: str, fallback: str) -> None:
        """A request of `model` went to its fallback `fallback`."""


class NoRouterObserver:
    def attempt(self, *, model: str, deployment: str, outcome: str) -> None:
        pass

    def outstanding(self, *, model: str, deployment: str, change: int) -> None:
        pass

    def availability(self, *, model: str, deployment: str, available: bool) -> None:
        pass

    def fallback(self, *, model: str, fallback: str) -> None:
        pass


def _fails_over(exc: BaseException) -> bool:
    """The deployment, not the request, is at fault: try another."""
    if isinstance(exc, EngineUnavailable):
        return True
    if isinstance(exc, UpstreamError):
        code = exc.status_code
        return code is None or code >= 500 or code in (408, 429)
    return False


class Deployment:
    def __init__(
        self, *, model: str, config: DeploymentConfig, handler: LLMHandler, observer: RouterObserver
    ) -> None:
        self.model = model
        self.label = config.label
        self.config = config
        self.handler = handler
        self._observer = observer
        self._lock = threading.Lock()
        self.outstanding = 0
        self.cooled_until = 0.0

    def available(self, now: float) -> bool:
        return now >= self.cooled_until

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()

    def begin(self) -> None:
        with self._lock:
            self.outstanding += 1
        self._observer.outstanding(model=self.model, deployment=self.label, change=+1)

    def end(self) -> None:
        with self._lock:
            self.outstanding -= 1
        self._observer.outstanding(model=self.model, deployment=self.label, change=-1)

    def cool_down(self, until: float) -> None:
        with self._lock:
            was_available = self.cooled_until <= time.monotonic()
            self.cooled_until = until
        if was_available:
            self._observer.availability(model=self.model, deployment=self.label, available=False)

    def restore(self) -> None:
        with self._lock:
            self.cooled_until = 0.0
        self._observer.availability(model=self.model, deployment=self.label, available=True)


class ModelRoute:
    """One model and its deployments."""

    def __init__(self, *, config: ModelConfig, deployments: list[Deployment]) -> None:
        self.config = config
        self.name = config.name
        self.deployments = deployments
        self._turn = itertools.count()

    def candidates(self, now: float) -> list[Deployment]:
        """The deployments not cooling down, least outstanding first; equals in turn."""
        available = [d for d in self.deployments if d.available(now)]
        if len(available) > 1:
            shift = next(self._turn) % len(available)
            available = available[shift:] + available[:shift]
            available.sort(key=lambda d: d.outstanding)  # stable: the turn breaks ties
        return available

    @property
    def primary(self) -> LLMHandler:
        """The handler that counts tokens and tells the context for the model."""
        return self.deployments[0].handler

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return self.primary.count_prompt_tokens(request)

    def context_length(self) -> int | None:
        if self.config.context_length is not None:
            return self.config.context_length
        return self.primary.context_length()


class Router:
    """The registry at run time: a ModelRoute per model, reachable by name and alias."""

    def __init__(
        self,
        config: RegistryConfig,
        *,
        handler_factory: HandlerFactory,
        observer: RouterObserver | None = None,
        on_cooled: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.config = config
        self._observer: RouterObserver = observer or NoRouterObserver()
        # Told (model, deployment, seconds) when this process cools a deployment down, so that
        # the other processes can (`cooled_elsewhere`).
        self._on_cooled = on_cooled
        self._routes: dict[str, ModelRoute] = {}
        self.models: list[ModelRoute] = []
        for model in config.models:
            route = ModelRoute(
                config=model,
                deployments=[
                    Deployment(
                        model=model.name,
                        config=deployment,
                        handler=handler_factory(model, deployment),
                        observer=self._observer,
                    )
                    for deployment in model.deployments
                ],
            )
            self.models.append(route)
            for deployment in route.deployments:
                self._observer.availability(model=model.name, deployment=deployment.label, available=True)
            for name in (model.name, *model.aliases):
                self._routes[name] = route
        self.default = self.models[0]
        self._health_lock = threading.Lock()
        self._health_thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def model(self, name: str | None) -> ModelRoute | None:
        """The model a request names (by name or alias), or the default when it names none."""
        return self.default if not name else self._routes.get(name)

    def route(self, model: ModelRoute, *, allowed: Callable[[str], bool] = lambda name: True) -> Route:
        """What a request for `model` runs on: the model, then its fallbacks the caller may use."""
        chain = [model]
        pending = list(model.config.fallbacks)
        while pending:
            fallback = self._routes[pending.pop(0)]
            if fallback not in chain and allowed(fallback.name):
                chain.append(fallback)
                pending.extend(fallback.config.fallbacks)
        return Route(router=self, chain=chain)

    def warm_up(self) -> None:
        for route in self.models:
            for deployment in route.deployments:
                deployment.handler.warm_up()

    def shutdown(self) -> None:
        self._stopped.set()
        handlers = {id(d.handler): d.handler for route in self.models for d in route.deployments}
        for handler in handlers.values():
            handler.shutdown()

    def status(self) -> list[dict[str, Any]]:
        """Each model's health, without its deployments' addresses (the status route is public;
        the per-deployment view is in the metrics)."""
        now = time.monotonic()
        return [
            {
                "name": route.name,
                "aliases": list(route.config.aliases),
                "context_length": route.context_length(),
                "fallbacks": list(route.config.fallbacks),
                "deployments": len(route.deployments),
                "available_deployments": sum(d.available(now) for d in route.deployments),
            }
            for route in self.models
        ]

    def default_status(self) -> EngineStatus:
        return self.default.primary.status()

    # --- Failures ------------------------------------------------------------------------

    def failed(self, route: ModelRoute, deployment: Deployment) -> None:
        """Cools the deployment down, when its requests have somewhere else to go."""
        if len(route.deployments) == 1 and not route.config.fallbacks:
            return
        seconds = self.config.router.cooldown_s
        deployment.cool_down(time.monotonic() + seconds)
        self._health_checks_start()
        if self._on_cooled is not None:
            self._on_cooled(route.name, deployment.label, seconds)

    def cooled_elsewhere(self, *, model: str, deployment: str, seconds: float) -> None:
        """Another process found this deployment down: skip it here too, for as long, and let
        this process's health checks bring it back. Unknown names (another registry) and lone
        deployments are left alone."""
        route = self._routes.get(model)
        if route is None or (len(route.deployments) == 1 and not route.config.fallbacks):
            return
        for candidate in route.deployments:
            if candidate.label == deployment:
                candidate.cool_down(time.monotonic() + min(seconds, self.config.router.cooldown_s))
                self._health_checks_start()

    def _health_checks_start(self) -> None:
        with self._health_lock:
            if self._health_thread is None or not self._health_thread.is_alive():
                self._health_thread = threading.Thread(
                    target=self._health_checks, name="llm-router-health", daemon=True
                )
                self._health_thread.start()

    def _health_checks(self) -> None:
        """Probes the cooling deployments until none is left."""
        deployments = [d for route in self.models for d in route.deployments]
        while not self._stopped.wait(self.config.router.health_check_s):
            now = time.monotonic()
            for deployment in deployments:
                if deployment.cooled_until and deployment.available(now):
                    deployment.restore()  # its cooldown ran out
                elif not deployment.available(now) and deployment.handler.probe():
                    deployment.restore()
            with self._health_lock:
                # Under the lock that starts this thread: a cooldown that begins after this
                # check starts a new one.
                if not any(d.cooled_until for d in deployments):
                    self._health_thread = None
                    return


class Route:
    """A request's models, in the order they are tried. Offers what the serving layer uses of an
    LLMHandler: counting, the context, generate and stream, each with failover."""

    def __init__(self, *, router: Router, chain: list[ModelRoute]) -> None:
        self._router = router
        self.chain = chain
        self.model = chain[0]

    @property
    def served_model_name(self) -> str:
        return self.model.name

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return self.model.count_prompt_tokens(request)

    def context_length(self) -> int | None:
        return self.model.context_length()

    def wait_ready(self) -> None:
        self.model.primary.wait_ready()

    def generate(self, request: GenerationRequest) -> GenerationResult:
        attempts = _Attempts(self, request)
        for route, deployment in attempts:
            try:
                with deployment.in_flight():
                    result = deployment.handler.generate(request)
            except Exception as exc:
                attempts.failed(route, deployment, exc)
                continue
            self._router._observer.attempt(model=route.name, deployment=deployment.label, outcome="ok")
            return dataclasses.replace(result, model=route.name)
        raise AssertionError("unreachable: the attempts raise when none is left")

    def stream(self, request: GenerationRequest) -> GenerationStream:
        """Connects, and where another deployment could take over, waits for the first event, so
        that a deployment that fails before it is replaced without the caller seeing it."""
        first_event_decides = sum(len(route.deployments) for route in self.chain) > 1
        attempts = _Attempts(self, request)
        for route, deployment in attempts:
            deployment.begin()
            try:
                stream = deployment.handler.stream(request)
                first = next(stream) if first_event_decides else None
            except Exception as exc:
                deployment.end()
                attempts.failed(route, deployment, exc)
                continue
            except BaseException:
                deployment.end()
                raise
            return GenerationStream(
                _RoutedStream(
                    router=self._router, model=route, deployment=deployment, stream=stream, first=first
                )
            )
        raise AssertionError("unreachable: the attempts raise when none is left")


class _Attempts:
    """One request's candidate deployments, model by model. Iterating raises the last failure
    when every candidate failed, or EngineUnavailable when there was none to try."""

    def __init__(self, route: Route, request: GenerationRequest) -> None:
        self._route = route
        self._router = route._router
        self._request = request
        self._failure: Exception | None = None

    def __iter__(self) -> Iterator[tuple[ModelRoute, Deployment]]:
        tried_any = False
        primary = self._route.model
        for index, model in enumerate(self._route.chain):
            if index and not _fits(model, self._request):
                continue
            candidates = model.candidates(time.monotonic())
            if index and candidates:
                self._router._observer.fallback(model=primary.name, fallback=model.name)
            for deployment in candidates:
                tried_any = True
                yield model, deployment
        if self._failure is not None:
            raise self._failure
        if not tried_any:
            raise EngineUnavailable(
                f"every deployment of model {primary.name!r} failed recently and is cooling down; "
                f"retry in {self._router.config.router.health_check_s:g}s"
            )

    def failed(self, model: ModelRoute, deployment: Deployment, exc: Exception) -> None:
        """Records a failed attempt; re-raises a failure that is the request's own."""
        if not _fails_over(exc):
            self._router._observer.attempt(model=model.name, deployment=deployment.label, outcome="refused")
            raise exc
        self._router._observer.attempt(model=model.name, deployment=deployment.label, outcome="failed")
        self._router.failed(model, deployment)
        self._failure = exc


def _fits(model: ModelRoute, request: GenerationRequest) -> bool:
    """Whether a fallback's context can hold the request (one that cannot is skipped)."""
    try:
        context = model.context_length()
        prompt_tokens = model.count_prompt_tokens(request)
    except Exception:
        return True  # its deployments fail over the same way when tried
    return context is None or prompt_tokens + request.params.max_tokens <= context


class _RoutedStream:
    """A deployment's stream, its first event already read when the router waited for it; ends
    the deployment's in-flight count once, however the stream ends."""

    def __init__(
        self,
        *,
        router: Router,
        model: ModelRoute,
        deployment: Deployment,
        stream: GenerationStream,
        first: StreamChunk | GenerationResult | None,
    ) -> None:
        self._router = router
        self._model = model
        self._deployment = deployment
        self._stream = stream
        self._first = first
        self._open = True

    def next_event(self) -> StreamChunk | GenerationResult:
        if self._first is not None:
            event, self._first = self._first, None
        else:
            try:
                event = next(self._stream)
            except StopIteration:
                self._end()
                raise UpstreamError("the stream ended without a result") from None
            except Exception as exc:
                self._end()
                if _fails_over(exc):
                    self._router.failed(self._model, self._deployment)
                raise
        if isinstance(event, GenerationResult):
            self._end()
            self._router._observer.attempt(
                model=self._model.name, deployment=self._deployment.label, outcome="ok"
            )
            return dataclasses.replace(event, model=self._model.name)
        return event

    def cancel(self) -> None:
        self._stream.close()
        self._end()

    def partial_result(self) -> GenerationResult:
        return dataclasses.replace(self._stream.partial_result(), model=self._model.name)

    def _end(self) -> None:
        if self._open:
            self._open = False
            self._deployment.end()
