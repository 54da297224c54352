"""One error shape for everything under /api/ and /v1/, the one OpenAI clients parse:

{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

API_PATH_PREFIXES = ("/api/", "/v1/")

TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def is_api_path(path: str) -> bool:
    return path.startswith(API_PATH_PREFIXES)


def error_body(
    *, message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    *,
    status: int,
    message: str,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    body = error_body(
        message=message,
        type=type or TYPES_BY_STATUS.get(status, "server_error" if status >= 500 else "api_error"),
        param=param,
        code=code,
    )
    response = JsonResponse(body, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


class APIError(Exception):
    """Raised by services and views for a failure the caller caused; rendered in the error shape."""

    status = 400
    type: str | None = None
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.status = status or self.status
        self.type = type or self.type
        self.headers = headers or {}

    def to_response(self) -> JsonResponse:
        return error_response(
            status=self.status,
            message=self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            headers=self.headers,
        )


class NotFound(APIError):
    status = 404
    code = "not_found"


class ServiceUnavailable(APIError):
    status = 503
    code = "service_unavailable"


class RequestTooLarge(APIError):
    status = 413
    code = "request_too_large"


def refused_request_error(exception: SuspiciousOperation) -> APIError:
    """What Django's request limits (DATA_UPLOAD_MAX_*) raise while reading a body, as the
    caller's error: a body over its size is a 413, too many fields or files a 400."""
    if isinstance(exception, RequestDataTooBig):
        return RequestTooLarge(
            f"The request is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes, the most this API "
            "reads besides an uploaded file; a larger document goes as a multipart file."
        )
    if isinstance(exception, TooManyFieldsSent):
        return APIError(
            f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields.",
            code="too_many_fields",
        )
    if isinstance(exception, TooManyFilesSent):
        return APIError(
            f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files.",
            code="too_many_files",
        )
    return APIError("The request is malformed.", code="bad_request")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's answer to a SuspiciousOperation raised outside a DRF view (a middleware reading
    a body over DATA_UPLOAD_MAX_MEMORY_SIZE): under the API, the same error a view gives."""
    if is_api_path(request.path):
        if isinstance(exception, SuspiciousOperation):
            return refused_request_error(exception).to_response()
        return error_response(status=400, message="The request is malformed.", code="bad_request")
    from django.views.defaults import bad_request

    return bad_request(request, exception or Exception("Bad request"))


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return error_response(
            status=404,
            message=f"No route matches {request.method} {request.path}.",
            code="unknown_url",
        )
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Exception("Not found"))


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return internal_error_response(sys.exc_info()[1])
    from django.views.defaults import server_error

    return server_error(request)


# Redis, or a Redis Cluster, that did not answer: a connection refused or timed out, a cluster
# with no node to reach or a slot without a node while it fails over.
_STORE_UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.RedisClusterException,
)


def internal_error_response(exception: BaseException | None = None) -> JsonResponse:
    """A 500 in the error shape; a 503 that says to retry when the shared store (Redis: rate
    limits, budgets, key cache) could not be reached, since nothing was done or charged."""
    if isinstance(exception, _STORE_UNREACHABLE):
        return error_response(
            status=503,
            message="The platform's shared store is unavailable; nothing was charged. Retry shortly.",
            code="store_unavailable",
            headers={"Retry-After": "1"},
        )
    return error_response(
        status=500,
        message="The server had an error while processing your request.",
        type="server_error",
        code="internal_error",
    )
