"""DRF's exception handler, reshaped into the platform's error shape (see common.errors)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import SuspiciousOperation
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from common.errors import TYPES_BY_STATUS, APIError, error_body, refused_request_error


def _first_validation_error(detail: Any, prefix: str = "") -> tuple[str | None, str, str | None]:
    """Flattens DRF's nested ValidationError detail to (param, message, code) of the first error."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = str(key)
            param = name if not prefix else f"{prefix}.{name}"
            if name == "non_field_errors":
                param = prefix or ""
            found_param, message, code = _first_validation_error(value, param)
            return (found_param or None), message, code
    if isinstance(detail, list) and detail:
        if all(not isinstance(item, (dict, list)) for item in detail):
            first = detail[0]
            return prefix or None, _message_for(prefix, str(first)), getattr(first, "code", None)
        for index, item in enumerate(detail):
            if item:
                return _first_validation_error(item, f"{prefix}[{index}]" if prefix else str(index))
    return prefix or None, _message_for(prefix, str(detail)), getattr(detail, "code", None)


def _message_for(param: str, message: str) -> str:
    return f"{param}: {message}" if param else message


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's exception handler, reshaped into the error shape."""
    if isinstance(exc, SuspiciousOperation):  # Django's request limits, hit while parsing the body
        exc = refused_request_error(exc)
    if isinstance(exc, APIError):
        return Response(
            error_body(
                message=exc.message,
                type=exc.type or TYPES_BY_STATUS.get(exc.status, "api_error"),
                param=exc.param,
                code=exc.code,
            ),
            status=exc.status,
            headers=exc.headers,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    status = response.status_code
    if isinstance(exc, drf_exceptions.ValidationError):
        param, message, code = _first_validation_error(exc.detail)
        response.data = error_body(
            message=message,
            type="invalid_request_error",
            param=param,
            code=code if code and code != "invalid" else "invalid_value",
        )
        return response
    if isinstance(exc, drf_exceptions.ParseError):
        request = context.get("request")
        if request is not None and not str(request.content_type).startswith("application/json"):
            response.data = error_body(
                message=f"The request body cannot be parsed: {exc.detail}",
                type="invalid_request_error",
                code="invalid_body",
            )
            return response
        response.data = error_body(
            message=f"The request body is not valid JSON: {exc.detail}",
            type="invalid_request_error",
            code="invalid_json",
        )
        return response
    detail = getattr(exc, "detail", str(exc))
    code = getattr(detail, "code", None) or getattr(exc, "default_code", None)
    response.data = error_body(
        message=str(detail),
        type=TYPES_BY_STATUS.get(status, "api_error"),
        code=str(code) if code else None,
    )
    return response
