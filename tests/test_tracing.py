"""OpenTelemetry: a generation's spans (Django, admission, the engine's queue wait, prefill and
decode) share one trace, recorded by an in-memory exporter; the request log line carries the
trace id; a job's trace goes from the API request through Redis to a Celery worker."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import spans as direct_spans
from common import tracing
from tests.conftest import CELERY_WORKER_COMMAND, ROOT, Tenant, server_env
from tests.engine.conftest import build_tiny_model


class _Recorder(InMemorySpanExporter):
    """Keeps spans only while a test of this module wants them."""

    recording = False

    def export(self, spans: Any) -> SpanExportResult:
        return super().export(spans) if self.recording else SpanExportResult.SUCCESS


_exporter = _Recorder()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into memory. The SDK's provider is global and set once per
    process, so after the module's tests (pytest-django runs the transactional one apart) the
    instrumentations are removed and the exporter stops keeping spans; the next use puts the
    instrumentations back."""
    assert tracing.tracing_configure(exporter=_exporter, batch=False)
    if "django" not in tracing.tracing_instrumented():
        tracing.tracing_instrument()
    _exporter.recording = True
    yield _exporter
    _exporter.recording = False
    _exporter.clear()
    tracing.tracing_uninstrument()


@pytest.fixture
def local_engine(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The gateway's engine on a tiny local model, so that its own spans are recorded."""
    from inference import services as inference_services

    settings.LLM_BACKEND = "local"
    settings.LLM_MODEL = str(build_tiny_model(tmp_path_factory.mktemp("model") / "tiny"))
    settings.LLM_TORCH_THREADS = 1
    settings.LLM_DEVICE = "cpu"
    previous = inference_services._router
    inference_services._router = None
    yield
    if inference_services._router is not None:
        inference_services._router.shutdown()
    inference_services._router = previous


def _trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


@pytest.mark.django_db
def test_a_generation_is_one_trace_from_the_request_to_the_engine(
    alice: Tenant, local_engine: None, spans: InMemorySpanExporter, caplog: Any
) -> None:
    spans.clear()
    with caplog.at_level(logging.INFO, logger="platform.access"):
        response = alice.client().post(
            "/api/v1/generate/", {"prompt": "hello world", "max_tokens": 4, "temperature": 0}, format="json"
        )
    assert response.status_code == 200, response.content
    completion_tokens = response.json()["meta"]["completion_tokens"]
    recorded = spans.get_finished_spans()
    by_name = {span.name: span for span in recorded}
    server = next(span for span in recorded if span.kind.name == "SERVER")
    trace_id = _trace_id(server)
    for name in ("admission", "engine.queue", "engine.prefill", "engine.decode"):
        assert name in by_name, sorted(by_name)
        assert _trace_id(by_name[name]) == trace_id, name
    assert by_name["admission"].attributes["llmp.admission.outcome"] == "admitted"
    assert by_name["engine.prefill"].attributes["llm.prompt_tokens"] > 0
    assert by_name["engine.decode"].attributes["llm.completion_tokens"] == completion_tokens
    # Queue wait, then prefill, then decode, in that order.
    queue, prefill, decode = (by_name[n] for n in ("engine.queue", "engine.prefill", "engine.decode"))
    assert queue.end_time <= prefill.start_time and prefill.end_time <= decode.end_time
    # Admission is the ledger's one Redis script: its span says so, and that call makes no
    # span of its own (without REDIS_URL the ledger is in memory: no Redis call at all).
    assert by_name["admission"].attributes.get("db.system") == ("redis" if settings.REDIS_URL else None)
    assert not any(
        s.instrumentation_scope is not None
        and s.instrumentation_scope.name == "common.tracing.redis"
        and s.parent is not None
        and s.parent.span_id == by_name["admission"].context.span_id
        for s in recorded
    )
    (line,) = [record for record in caplog.records if record.name == "platform.access"]
    assert line.trace_id == trace_id
    # One trace: the budget's settlement, after the response, too.
    assert {_trace_id(span) for span in recorded} == {trace_id}


@pytest.mark.django_db
def test_a_callers_trace_context_is_continued_by_the_server_span(
    alice: Tenant, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = alice.client().get("/api/v1/usage/", HTTP_TRACEPARENT=f"00-{trace_id}-{parent_id}-01")
    assert response.status_code == 200, response.content
    server = next(span for span in spans.get_finished_spans() if span.kind.name == "SERVER")
    assert _trace_id(server) == trace_id
    assert server.parent is not None and format(server.parent.span_id, "016x") == parent_id
    assert server.name == "GET api/v1/usage/"
    assert server.instrumentation_scope is not None and server.instrumentation_scope.name == "common.tracing"
    assert dict(server.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/api/v1/usage/",
        "url.scheme": "http",
        "http.route": "api/v1/usage/",
        "http.response.status_code": 200,
    }


@pytest.mark.django_db
def test_a_request_without_trace_context_starts_a_trace_and_an_unknown_route_is_not_named(
    alice: Tenant, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    assert alice.client().get("/api/v1/does-not-exist/").status_code == 404
    (server,) = [span for span in spans.get_finished_spans() if span.kind.name == "SERVER"]
    assert server.parent is None
    assert server.name == "GET"
    assert server.attributes is not None and "http.route" not in server.attributes
    assert server.attributes["http.response.status_code"] == 404
    assert server.status.status_code.name == "UNSET"


@pytest.mark.django_db
def test_every_log_line_in_a_span_carries_its_ids(spans: InMemorySpanExporter) -> None:
    from opentelemetry import trace

    from common.logging import JSONFormatter, RequestIDFilter

    with trace.get_tracer("test").start_as_current_span("work") as span:
        record = logging.makeLogRecord({"msg": "inside", "levelno": logging.INFO, "levelname": "INFO"})
        RequestIDFilter().filter(record)
    written = json.loads(JSONFormatter().format(record))
    context = span.get_span_context()
    assert written["trace_id"] == format(context.trace_id, "032x")
    assert written["span_id"] == format(context.span_id, "016x")
    outside = logging.makeLogRecord({"msg": "outside"})
    RequestIDFilter().filter(outside)
    assert json.loads(JSONFormatter().format(outside))["trace_id"] is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not settings.CELERY_BROKER_URL, reason="needs a broker: set REDIS_URL (CI does)")
def test_a_job_is_one_trace_from_the_api_through_redis_to_the_worker(
    alice: Tenant, openai_backend: str, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    spans.clear()
    log = tmp_path / "worker.out"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            CELERY_WORKER_COMMAND,
            cwd=ROOT,
            env=server_env(
                OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="worker", OTEL_BSP_SCHEDULE_DELAY="100"
            ),
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    try:
        response = alice.client().post("/api/v1/jobs/", {"prompt": "hello", "max_tokens": 3}, format="json")
        assert response.status_code == 202
        trace_id = _trace_id(next(s for s in spans.get_finished_spans() if s.kind.name == "SERVER"))
        assert any(
            s.name.startswith("apply_async") and _trace_id(s) == trace_id for s in spans.get_finished_spans()
        )
        deadline = time.monotonic() + 90
        worker_spans: list[dict[str, Any]] = []
        while not any(s["name"].startswith("run/") for s in worker_spans):
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
            lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
            worker_spans = [s for s in map(json.loads, lines) if s["context"]["trace_id"] == f"0x{trace_id}"]
        assert alice.client().get(response["Location"]).json()["status"] == "succeeded"
        run = next(s for s in worker_spans if s["name"].startswith("run/"))
        names = {s["name"] for s in worker_spans}
        # The worker's own work is in the same trace: its database, Redis and the upstream call.
        assert "engine.upstream" in names and "EVALSHA" in names, names
        assert any(s["attributes"].get("db.system") == "postgresql" for s in worker_spans), names
        assert run["resource"]["attributes"]["service.name"] == "worker"
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_an_operator_can_leave_out_instrumentations() -> None:
    """OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, as opentelemetry-instrument reads it (a fresh
    process: instrumentation is once per process)."""
    script = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'platform.settings.test'); "
        "django.setup(); from common.tracing import tracing_instrument; tracing_instrument(); "
        "from common.tracing import tracing_instrumented; print(*sorted(tracing_instrumented()))"
    )
    env = {**os.environ, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis, psycopg"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["celery", "django", "httpx", "requests"]


def test_a_full_export_queue_drops_spans_without_a_log_record_each(caplog: Any) -> None:
    """With the collector down the queue fills; each span more is dropped for the price of a
    counter, and one warning a minute says how many."""
    import threading

    from opentelemetry.sdk.trace import TracerProvider

    exporting, release = threading.Event(), threading.Event()

    class Stuck(InMemorySpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            exporting.set()
            release.wait(30)
            return SpanExportResult.FAILURE

    processor = tracing.DroppingBatchSpanProcessor(Stuck(), max_queue_size=8, max_export_batch_size=4)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    try:
        for _ in range(4):  # a batch: the export thread takes it and hangs
            tracer.start_span("x").end()
        assert exporting.wait(30)
        with caplog.at_level(logging.DEBUG):
            for _ in range(8 + 5):
                tracer.start_span("x").end()
            assert processor._dropped == 5
            assert not caplog.records
            processor._reported_at -= processor._REPORT_EVERY_S
            tracer.start_span("x").end()
        assert [r.getMessage() for r in caplog.records] == [
            "Tracing: 6 spans dropped, the export queue being full"
        ]
    finally:
        release.set()
        provider.shutdown()


@pytest.mark.django_db
def test_a_finished_span_recorded_directly_is_the_span_the_sdk_would_have_made(
    spans: InMemorySpanExporter,
) -> None:
    """The platform's own child spans skip the SDK's tracer (issue 15): what the exporter gets
    must not tell them apart, but for their ids."""
    from opentelemetry import trace

    assert direct_spans.recorder is not None  # the SDK's default sampler follows the parent
    spans.clear()
    attributes = {"llmp.admission.outcome": "admitted", "llmp.tokens.estimated": 12}
    with trace.get_tracer("test").start_as_current_span("request") as parent:
        start, end = time.time_ns() - 5_000, time.time_ns()
        direct_spans.span_finished(
            "admission", start_ns=start, end_ns=end, attributes=dict(attributes), scope="x.y"
        )
        trace.get_tracer("x.y").start_span("admission", start_time=start, attributes=attributes).end(
            end_time=end
        )
    direct, made = (s for s in spans.get_finished_spans() if s.name == "admission")

    assert _described(direct) == _described(made)
    assert direct.parent == parent.get_span_context()
    assert direct.context is not None and made.context is not None
    assert direct.context.span_id not in (made.context.span_id, parent.get_span_context().span_id)
    assert json.loads(direct.to_json())["attributes"] == attributes


@pytest.mark.django_db
def test_a_finished_span_outside_a_recorded_one_is_not_recorded_and_an_error_is(
    spans: InMemorySpanExporter,
) -> None:
    from opentelemetry import trace

    spans.clear()
    direct_spans.span_finished("alone", start_ns=time.time_ns(), attributes={}, scope="test")
    assert spans.get_finished_spans() == ()
    with trace.get_tracer("test").start_as_current_span("request"):
        direct_spans.span_finished(
            "failed", start_ns=time.time_ns(), attributes={}, scope="test", error=ValueError("no")
        )
    (failed,) = [s for s in spans.get_finished_spans() if s.name == "failed"]
    assert failed.status.status_code.name == "ERROR"
    assert [event.name for event in failed.events] == ["exception"]


def test_only_a_sampler_that_follows_the_parent_lets_spans_skip_it() -> None:
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        ParentBasedTraceIdRatio,
        TraceIdRatioBased,
    )

    assert direct_spans.follows_parent(ParentBased(ALWAYS_ON))
    assert direct_spans.follows_parent(ParentBasedTraceIdRatio(0.1))
    assert not direct_spans.follows_parent(ALWAYS_ON)
    assert not direct_spans.follows_parent(TraceIdRatioBased(0.5))
    assert not direct_spans.follows_parent(ParentBased(ALWAYS_ON, local_parent_sampled=ALWAYS_OFF))


def _described(span: ReadableSpan, *, times: bool = True) -> dict[str, Any]:
    """What an exporter reads of a span, but its ids."""
    assert span.context is not None and span.instrumentation_scope is not None
    return {
        "name": span.name,
        "trace_id": span.context.trace_id,
        "flags": span.context.trace_flags,
        "state": span.context.trace_state,
        "remote": span.context.is_remote,
        "parent": span.parent,
        "kind": span.kind,
        "attributes": dict(span.attributes or {}),
        "times": (span.start_time, span.end_time) if times else None,
        "status": (span.status.status_code, span.status.description),
        "scope": span.instrumentation_scope,
        "resource": span.resource.attributes,
        "events": [
            (e.name, {k: v for k, v in (e.attributes or {}).items() if k != "exception.stacktrace"})
            for e in span.events
        ],
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
    }


@pytest.mark.django_db
def test_the_server_span_recorded_by_the_platform_is_the_span_the_sdk_would_have_made(
    spans: InMemorySpanExporter,
) -> None:
    """The same calls on the platform's server span and on the SDK's give the same span: a
    caller's context continued, attributes cleaned as the SDK cleans them, an exception, a
    status, a link, a new name, a second end ignored."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    assert direct_spans.recorder is not None
    spans.clear()
    caller = tracing._incoming_context(
        {"HTTP_TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    )
    linked = trace.SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=trace.TraceFlags(1))
    attributes = {"http.request.method": "GET", "url.path": "/x"}
    made = [
        trace.get_tracer("common.tracing").start_span(
            "GET", context=caller, kind=SpanKind.SERVER, attributes=attributes
        ),
        direct_spans.DirectSpan.start(
            direct_spans.recorder,
            "GET",
            parent=caller,
            kind=SpanKind.SERVER,
            attributes=attributes,
            scope="common.tracing",
        ),
    ]
    try:
        raise ValueError("boom")
    except ValueError as exc:
        error = exc
    for span in made:
        assert span.is_recording()
        span.set_attributes({"http.route": "x/", "retries": [1, 2], "empty": None})
        span.set_attribute("http.response.status_code", 500)
        span.add_event("note", {"k": "v"}, timestamp=123)
        span.add_link(linked, {"why": "batch"})
        span.record_exception(error, timestamp=456)
        span.set_status(Status(StatusCode.ERROR, "ValueError"))
        span.set_status(StatusCode.UNSET)
        span.update_name("GET x/")
        span.end()
        assert not span.is_recording()
        span.set_attribute("after", 1)
        span.end()
    sdk, direct = spans.get_finished_spans()
    assert _described(direct, times=False) == _described(sdk, times=False)
    assert direct.parent is not None and format(direct.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert direct.events[1].attributes is not None
    assert "ValueError: boom" in str(direct.events[1].attributes["exception.stacktrace"])


@pytest.mark.django_db
def test_an_unhandled_error_is_recorded_on_the_server_span(
    alice: Tenant, spans: InMemorySpanExporter, monkeypatch: Any
) -> None:
    def explode(**kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("usage.apis.usage_report", explode)
    spans.clear()
    client = alice.client()
    client.raise_request_exception = False
    assert client.get("/api/v1/usage/", {"start": "2026-01-01", "end": "2026-01-02"}).status_code == 500
    (server,) = [span for span in spans.get_finished_spans() if span.kind.name == "SERVER"]
    assert server.status.status_code.name == "ERROR"
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 500
    (event,) = server.events
    assert event.attributes is not None
    assert (event.name, event.attributes["exception.type"]) == ("exception", "RuntimeError")
