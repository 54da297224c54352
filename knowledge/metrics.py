"""Ingestion's Prometheus metrics: where a document's time goes, by stage."""

from __future__ import annotations

from prometheus_client import Histogram

# parse: text out of the file; chunk: token-bounded passages; embed: encoding the passages and
# writing them with their keywords; index: publishing the chunks to the organization's indexes.
INGESTION_SECONDS = Histogram(
    "llmp_ingestion_seconds",
    "Seconds a document's ingestion spent in each stage (parse, chunk, embed, index).",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
