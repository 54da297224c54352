"""Request body parsing with bounded work: a body is refused from its declared length before it
is read, and never read past the limit."""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from common.errors import RequestTooLarge
from common.request_notes import request_notes


def declared_content_length(meta: Mapping[str, Any]) -> int:
    """The body length the client declared; 0 when absent or malformed, as Django reads it."""
    try:
        return max(0, int(meta.get("CONTENT_LENGTH") or 0))
    except (TypeError, ValueError):
        return 0


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The JSON body is larger than {limit} bytes, the most this API reads.")


class BoundedJSONParser(JSONParser):
    """The body admission parsed already is taken as it is. DRF's JSONParser reads the whole
    stream whatever its length. A request whose body the
    middlewares did not read (Django bounds `request.body` by DATA_UPLOAD_MAX_MEMORY_SIZE) is
    bounded here by the same API_MAX_JSON_BODY_BYTES, and nesting too deep for Python's decoder
    is a 400 instead of a RecursionError."""

    def parse(self, stream: IO[Any] | None, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.API_MAX_JSON_BODY_BYTES
        request = (parser_context or {}).get("request")
        if request is not None:
            parsed = request_notes(request).json_body
            if parsed is not None:  # admission read and parsed it already
                return parsed
        if request is not None and declared_content_length(request.META) > limit:
            raise _too_large(limit)
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise _too_large(limit)
        try:
            return super().parse(BytesIO(raw), media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - the body is nested too deeply.") from exc
