"""Ingestion's Prometheus metric and spans: where a document's time goes, by stage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from prometheus_client import Histogram

# parse: text out of the file; chunk: token-bounded passages; embed: encoding the passages and
# writing them with their keywords; index: publishing the chunks to the organization's indexes.
INGESTION_SECONDS = Histogram(
    "llmp_ingestion_seconds",
    "Seconds a document's ingestion spent in each stage (parse, chunk, embed, index).",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
_tracer = trace.get_tracer(__name__)


@contextmanager
def ingestion_stage(stage: str, *, document_id: int) -> Iterator[None]:
    """Times one stage (the histogram) and traces it (a span `ingestion.<stage>`)."""
    with (
        _tracer.start_as_current_span(f"ingestion.{stage}", attributes={"llmp.document_id": document_id}),
        INGESTION_SECONDS.labels(stage).time(),
    ):
        yield
