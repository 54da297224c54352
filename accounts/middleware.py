from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from accounts.authentication import authenticate
from common.errors import APIError, is_api_path
from common.request_notes import request_notes

# Under the API prefixes, these paths are reachable without credentials.
PUBLIC_API_PATHS = frozenset(
    {
        "/api/v1/auth/token/",
        "/api/v1/auth/token/refresh/",
        "/api/v1/billing/stripe/webhook/",
        "/api/v1/invitations/accept/",
        "/api/v1/signup/",
        "/api/schema/",
    }
)


class APIAuthenticationMiddleware:
    """First stage of the API pipeline. Notes the caller's `AuthContext` (`request_notes(request)
    .auth`) for every request under /api/ and /v1/, or answers 401/403 in the error shape."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_api_path(request.path) and request.path not in PUBLIC_API_PATHS:
            try:
                request_notes(request).auth = authenticate(request)
            except APIError as error:
                response = error.to_response()
                if error.status == 401:
                    response["WWW-Authenticate"] = 'Bearer realm="api"'
                return response
        return self.get_response(request)
