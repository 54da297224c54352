"""The standalone inference service (Procfile `inference`): gunicorn serving the engine over the
OpenAI protocol, and the gateway reaching it with the openai backend."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import BIN, ROOT, Tenant, free_port, wait_http
from tests.engine.conftest import build_tiny_model


@pytest.fixture(scope="module")
def inference_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model_dir = build_tiny_model(tmp_path_factory.mktemp("model") / "tiny")
    port = free_port()
    env = {
        "PATH": str(BIN),
        "LLM_MODEL": str(model_dir),
        "LLM_SERVED_MODEL_NAME": "tiny",
        "LLM_TORCH_THREADS": "1",
        "HOME": str(Path.home()),
    }
    process = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "inference.server:create_app()",
            "--workers",
            "1",
            "--worker-class",
            "gthread",
            "--threads",
            "16",
            "--bind",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_openai_sdk_talks_to_the_inference_service(inference_service: str) -> None:
    client = openai.OpenAI(base_url=inference_service, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    completion = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0
    )
    assert completion.usage.completion_tokens <= 5
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="hello",
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 4
    same = client.completions.create(model="tiny", prompt="hello", max_tokens=4, temperature=0)
    assert same.choices[0].text == "".join(c.choices[0].text for c in chunks if c.choices)


def test_unknown_model_is_404(inference_service: str) -> None:
    client = openai.OpenAI(base_url=inference_service, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=2)


@pytest.mark.django_db
def test_gateway_reaches_the_service_with_the_openai_backend(
    alice: Tenant, inference_service: str, settings
) -> None:
    from inference import services

    settings.LLM_BACKEND, settings.LLM_MODEL, settings.LLM_BASE_URL = "openai", "tiny", inference_service
    previous, services._router = services._router, None
    try:
        response = alice.client().post(
            "/api/v1/generate/", {"prompt": "hello", "max_tokens": 3, "temperature": 0}, format="json"
        )
        assert response.status_code == 200, response.content
        assert response.json()["meta"]["model"] == "tiny"
        assert response.json()["meta"]["completion_tokens"] <= 3
    finally:
        services._router = previous


def test_the_service_exports_its_engine_metrics(inference_service: str) -> None:
    """Its engine batches every gateway's requests: its queue, batch and timings are its own."""
    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(
            inference_service.removesuffix("/v1") + "/metrics", timeout=10
        ) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    ttft = ("llmp_time_to_first_token_seconds_count", (("model", "tiny"),))
    generated = ("llmp_generation_seconds_count", (("model", "tiny"),))
    before = samples()
    client = openai.OpenAI(base_url=inference_service, api_key="unused", max_retries=0)
    client.completions.create(model="tiny", prompt="hello", max_tokens=3, temperature=0)
    after = samples()
    assert after[ttft] == before.get(ttft, 0) + 1
    assert after[generated] == before.get(generated, 0) + 1
    assert after[("llmp_engine_batch_size_count", ())] > before.get(("llmp_engine_batch_size_count", ()), 0)
    assert after[("llmp_engine_queue_depth", ())] == 0
