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
    ref = {"$ref": "#/components/schemas/Error"}
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
