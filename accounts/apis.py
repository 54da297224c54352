from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from django.contrib.auth.hashers import make_password
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from oauth2_provider.models import get_application_model
from oauth2_provider.views import TokenView
from rest_framework import exceptions, serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from accounts.serializers import OrganizationTokenObtainSerializer, TokenRefreshSerializer
from accounts.throttling import SignInThrottled, client_ip, sign_in_attempt


@extend_schema(
    tags=["auth"],
    summary="Obtain a JWT pair for a member of an organization",
    description="Failed attempts are limited per client address and per email (429 with Retry-After).",
    responses=inline_serializer(
        "TokenPair", {"access": serializers.CharField(), "refresh": serializers.CharField()}
    ),
)
class TokenObtainApi(TokenObtainPairView):
    serializer_class = OrganizationTokenObtainSerializer  # type: ignore[assignment]
    authentication_classes = ()
    permission_classes = (AllowAny,)  # type: ignore[assignment]  # the stubs type it as an empty tuple

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # An unknown email costs the same password hash as a known one: Django's ModelBackend
        # hashes the given password for it (tests/accounts/test_sign_in_throttling.py).
        data = request.data
        email = data.get("email") if isinstance(data, Mapping) else None
        attempt = sign_in_attempt(
            ip=client_ip(request), account_kind="email", account=email if isinstance(email, str) else ""
        )
        try:
            response = super().post(request, *args, **kwargs)
        except exceptions.AuthenticationFailed:
            raise  # wrong credentials: the attempt keeps its slots
        except Exception:
            attempt.release()
            raise
        attempt.release()
        return response


@extend_schema(tags=["auth"], summary="Refresh a JWT access token")
class TokenRefreshApi(TokenRefreshView):
    serializer_class = TokenRefreshSerializer
    authentication_classes = ()
    permission_classes = (AllowAny,)  # type: ignore[assignment]  # the stubs type it as an empty tuple


def _client_credentials(request: HttpRequest) -> tuple[str, str]:
    """The client id and secret of a token request, from HTTP Basic (RFC 6749 2.3.1: each
    form-urlencoded) or from the body; empty strings for what is missing or unreadable."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme == "Basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
        client_id, _, secret = decoded.partition(":")
        return unquote_plus(client_id), unquote_plus(secret)
    return str(request.POST.get("client_id", "")), str(request.POST.get("client_secret", ""))


class OAuthTokenApi(TokenView):
    """django-oauth-toolkit's token endpoint, with failed client authentications limited per
    client address and per client id (429 with Retry-After, in the API's error shape)."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        client_id, secret = _client_credentials(request)
        try:
            attempt = sign_in_attempt(ip=client_ip(request), account_kind="client_id", account=client_id)
        except SignInThrottled as error:
            return error.to_response()
        if client_id and not get_application_model().objects.filter(client_id=client_id).exists():
            # The hash a known client's secret check costs, so that the answer's timing does
            # not tell which client ids exist (as Django's ModelBackend does for emails).
            make_password(secret)
        response = super().post(request, *args, **kwargs)
        if response.status_code != 401:  # 401: invalid_client, the secret was wrong
            attempt.release()
        return response
