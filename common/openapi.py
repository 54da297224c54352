"""drf-spectacular hook: the error shape as a component, and the errors every API operation
can answer."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "example": "invalid_request_error"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}

# The answer of a route that streams (`stream: true`): the schema of each server-sent event, as
# OpenAPI before 3.2 reads a `text/event-stream` schema (3.2 names it `itemSchema`).
SSE_EVENT_SCHEMA = {
    "type": "object",
    "description": "One server-sent event: its name (`message` when the stream names none) and its data.",
    "required": ["event", "data"],
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
}

# Where a view names an error answer of its own beside the ones every operation has.
ERROR_REF = {"$ref": "#/components/schemas/Error"}

_ERRORS = {
    "400": "Invalid request: the message and `param` name the field.",
    "401": "Missing, wrong, expired or revoked credentials.",
    "403": "Suspended organization, or a missing scope (named in the message).",
    "404": "Not found (or not yours: the answer is the same).",
    "429": "Rate limit (`rate_limit_exceeded`) or exhausted budget (`insufficient_quota`).",
    "500": "Server error; no details leak.",
}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = ERROR_REF
    for path, operations in result.get("paths", {}).items():
        if not path.startswith(("/api/v1/", "/v1/")):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in _ERRORS.items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": ref}}}
                )
    return result
