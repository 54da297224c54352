"""Logs as one JSON object per line, carrying the request id of the request being served."""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime

from common.tracing import current_ids

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "request_id"}


class RequestIDFilter(logging.Filter):
    """Stamps the record, where it is emitted, with the request id and the current trace and
    span ids (a handler may format it later, on another thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get()
        if not getattr(record, "trace_id", None):
            record.trace_id, record.span_id = current_ids() or (None, None)
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "trace_id": None,
            "span_id": None,
        }
        if not getattr(record, "trace_id", None):
            payload["trace_id"], payload["span_id"] = current_ids() or (None, None)
        payload.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and k[0] != "_"})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
