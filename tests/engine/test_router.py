"""The router on its own (no Django, no HTTP): which deployment gets a request, what fails over,
cooldown and the health checks that end it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from inference.engine.registry import DeploymentConfig, ModelConfig, RegistryConfig, RouterConfig
from inference.engine.router import Router
from inference.engine.types import (
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    UpstreamError,
)

REQUEST = GenerationRequest(prompt="hi", params=SamplingParams(max_tokens=4))


class FakeHandler:
    """A deployment's engine: answers, fails as told, or blocks until released."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.calls = 0
        self.error: Exception | None = None
        self.healthy = True
        self.gate: threading.Event | None = None

    def generate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.error is not None:
            raise self.error
        return GenerationResult(
            text=self.label, prompt_tokens=1, completion_tokens=1, finish_reason="stop", model="x"
        )

    def probe(self) -> bool:
        return self.healthy

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return 1

    def context_length(self) -> int | None:
        return None

    def shutdown(self) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def attempt(self, *, model: str, deployment: str, outcome: str) -> None:
        self.seen.append(("attempt", (deployment, outcome)))

    def outstanding(self, *, model: str, deployment: str, change: int) -> None:
        pass

    def availability(self, *, model: str, deployment: str, available: bool) -> None:
        self.seen.append(("available", (deployment, available)))

    def fallback(self, *, model: str, fallback: str) -> None:
        self.seen.append(("fallback", fallback))


def make_router(
    *models: tuple[str, list[str], list[str]], health_check_s: float = 60
) -> tuple[Router, dict[str, FakeHandler], Events]:
    handlers: dict[str, FakeHandler] = {}
    config = RegistryConfig(
        models=tuple(
            ModelConfig(
                name=name,
                deployments=tuple(
                    DeploymentConfig(label=label, base_url=f"http://{label}/v1") for label in labels
                ),
                fallbacks=tuple(fallbacks),
            )
            for name, labels, fallbacks in models
        ),
        router=RouterConfig(cooldown_s=30, health_check_s=health_check_s),
    )

    def factory(model: ModelConfig, deployment: DeploymentConfig) -> Any:
        handlers[deployment.label] = FakeHandler(deployment.label)
        return handlers[deployment.label]

    events = Events()
    router = Router(config, handler_factory=factory, observer=events)
    return router, handlers, events


def generate(router: Router, model: str = "m") -> GenerationResult:
    route = router.model(model)
    assert route is not None
    return router.route(route).generate(REQUEST)


def test_idle_deployments_take_turns() -> None:
    router, _handlers, _ = make_router(("m", ["a", "b"], []))
    assert [generate(router).text for _ in range(4)] in (["a", "b", "a", "b"], ["b", "a", "b", "a"])


def test_a_busy_deployment_is_passed_over_for_an_idle_one() -> None:
    router, handlers, _ = make_router(("m", ["a", "b"], []))
    handlers["a"].gate = threading.Event()
    handlers["b"].gate = threading.Event()
    first = threading.Thread(target=generate, args=(router,))
    first.start()
    deadline = time.monotonic() + 5
    while handlers["a"].calls + handlers["b"].calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    busy = "a" if handlers["a"].calls else "b"
    idle = "b" if busy == "a" else "a"
    handlers[idle].gate = None
    for _ in range(3):
        assert generate(router).text == idle  # one outstanding on `busy`, none on `idle`
    handlers[busy].gate.set()  # type: ignore[union-attr]
    first.join()


@pytest.mark.parametrize(
    "error",
    [
        UpstreamError("refused", status_code=None),
        UpstreamError("boom", status_code=503),
        UpstreamError("slow down", status_code=429),
        EngineUnavailable("failed to load"),
    ],
)
def test_a_failing_deployment_is_replaced_then_skipped(error: Exception) -> None:
    router, handlers, events = make_router(("m", ["a", "b"], []))
    handlers["a"].error = error
    assert {generate(router).text for _ in range(6)} == {"b"}
    assert handlers["a"].calls == 1  # cooled down after its one failure
    assert ("available", ("a", False)) in events.seen


def test_the_requests_own_fault_is_not_retried_elsewhere() -> None:
    router, handlers, _ = make_router(("m", ["a", "b"], []))
    handlers["a"].error = handlers["b"].error = UpstreamError("bad request", status_code=400)
    with pytest.raises(UpstreamError):
        generate(router)
    assert handlers["a"].calls + handlers["b"].calls == 1


def test_a_lone_deployment_is_never_cooled_down() -> None:
    router, handlers, _ = make_router(("m", ["a"], []))
    handlers["a"].error = UpstreamError("down", status_code=None)
    for _ in range(3):
        with pytest.raises(UpstreamError):
            generate(router)
    assert handlers["a"].calls == 3  # nowhere else to go: each request tries it


def test_fallbacks_in_order_then_nothing_while_everything_cools() -> None:
    router, handlers, events = make_router(
        ("m", ["a"], ["n", "o"]), ("n", ["b1", "b2"], []), ("o", ["c1", "c2"], [])
    )
    for label in ("a", "b1", "b2"):
        handlers[label].error = UpstreamError("down", status_code=502)
    result = generate(router)
    assert (result.text in ("c1", "c2"), result.model) == (True, "o")  # named after the model that answered
    assert [e for e in events.seen if e[0] == "fallback"] == [("fallback", "n"), ("fallback", "o")]
    for label in ("c1", "c2"):
        handlers[label].error = UpstreamError("down", status_code=None)
    with pytest.raises(UpstreamError):
        generate(router)  # c1 and c2 were still available: tried, failed
    with pytest.raises(EngineUnavailable, match="cooling down"):
        generate(router)  # everything is cooling: nothing is tried
    assert [handlers[label].calls for label in ("a", "b1", "b2")] == [1, 1, 1]


def test_a_health_check_brings_a_deployment_back_before_its_cooldown_ends() -> None:
    router, handlers, events = make_router(("m", ["a", "b"], []), health_check_s=0.05)
    handlers["a"].error = UpstreamError("down", status_code=None)
    handlers["a"].healthy = False
    generate(router)
    time.sleep(0.3)
    assert not router.models[0].deployments[0].available(time.monotonic())  # probes fail: still out
    handlers["a"].error, handlers["a"].healthy = None, True
    deadline = time.monotonic() + 5
    while not router.models[0].deployments[0].available(time.monotonic()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ("available", ("a", True)) in events.seen[1:]
    assert "a" in {generate(router).text for _ in range(4)}
    router.shutdown()
