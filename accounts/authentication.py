"""Resolves who is calling from the request's credentials: an API key, a JWT, or an OAuth2
access token. The middleware calls `authenticate` once per request; DRF reads the result."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from oauth2_provider.models import get_access_token_model
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from accounts import keys
from accounts.context import AuthContext
from accounts.models import APIKey, OAuthClient
from accounts.scopes import effective_scopes
from accounts.selectors import api_key_resolve, membership_get
from accounts.services import api_key_touch
from common.errors import APIError
from common.request_notes import request_notes


class AuthenticationFailed(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"


def _credential(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthenticationFailed(
                "The Authorization header must be 'Bearer <credential>'.", code="invalid_authorization"
            )
        return value.strip()
    api_key = request.headers.get("X-API-Key", "").strip()
    return api_key or None


# What a suspended organization may still reach: its billing, so that it can see
# what it owes and give a card that pays it (which reactivates it).
SUSPENDED_MAY_USE = ("/api/v1/billing/",)


def authenticate(request: HttpRequest) -> AuthContext:
    credential = _credential(request)
    if credential is None:
        raise AuthenticationFailed(
            "No credentials were provided. Send 'Authorization: Bearer <API key>' or 'X-API-Key'.",
            code="missing_credentials",
        )
    if credential.startswith(keys.KEY_PREFIX):
        context = _authenticate_api_key(credential)
    elif credential.count(".") == 2:
        context = _authenticate_jwt(credential)
    else:
        context = _authenticate_oauth2(credential)
    if not context.organization.is_active and not request.path.startswith(SUSPENDED_MAY_USE):
        raise PermissionDenied(
            f"The organization '{context.organization.slug}' is suspended.",
            code="organization_suspended",
        )
    return context


def api_key_check_usable(*, api_key: APIKey) -> None:
    """Raises AuthenticationFailed for a revoked or expired key (a request's key, or the key a
    queued job was made with, checked again when the job starts)."""
    if api_key.revoked_at is not None:
        raise AuthenticationFailed(
            f"The API key {api_key.prefix}… was revoked on {api_key.revoked_at:%Y-%m-%d %H:%M} UTC.",
            code="api_key_revoked",
        )
    if api_key.is_expired(now=timezone.now()):
        assert api_key.expires_at is not None
        raise AuthenticationFailed(
            f"The API key {api_key.prefix}… expired on {api_key.expires_at:%Y-%m-%d %H:%M} UTC.",
            code="api_key_expired",
        )


def _authenticate_api_key(raw_key: str) -> AuthContext:
    invalid = AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    if not keys.looks_like_api_key(raw_key):
        raise invalid
    resolved = api_key_resolve(prefix=keys.key_prefix(raw_key))
    if resolved is None or not keys.key_matches(raw_key=raw_key, secret_hash=resolved.api_key.secret_hash):
        raise invalid
    api_key = resolved.api_key
    api_key_check_usable(api_key=api_key)
    if api_key.user_id is not None and (
        resolved.membership is None or resolved.user is None or not resolved.user.is_active
    ):
        raise AuthenticationFailed(
            "The member this API key belongs to is no longer active in the organization.",
            code="member_inactive",
        )
    api_key_touch(api_key_id=api_key.pk, resolution_seconds=settings.API_KEY_LAST_USED_RESOLUTION_SECONDS)
    return AuthContext(
        organization=resolved.organization,
        # A member's key never does more than the member's role allows, whatever it was given.
        scopes=effective_scopes(
            granted=api_key.scopes,
            role=resolved.membership.role if resolved.membership is not None else None,
        ),
        method="api_key",
        user=resolved.user,
        membership=resolved.membership,
        api_key=api_key,
    )


def _authenticate_jwt(raw_token: str) -> AuthContext:
    try:
        token = AccessToken(raw_token)  # type: ignore[arg-type]
    except TokenError as exc:
        raise AuthenticationFailed(f"Invalid or expired token: {exc}", code="invalid_token") from exc
    organization_id = token.get("org")
    user_id = token.get(str(settings.SIMPLE_JWT["USER_ID_CLAIM"]))
    if organization_id is None or user_id is None:
        raise AuthenticationFailed("The token names no organization.", code="invalid_token")
    membership = membership_get(user_id=int(user_id), organization_id=int(organization_id))
    if membership is None or not membership.user.is_active:
        raise AuthenticationFailed(
            "The token's user is no longer an active member of its organization.", code="invalid_token"
        )
    return AuthContext(
        organization=membership.organization,
        scopes=membership.scopes,
        method="jwt",
        user=membership.user,
        membership=membership,
    )


def _authenticate_oauth2(raw_token: str) -> AuthContext:
    checksum = hashlib.sha256(raw_token.encode()).hexdigest()
    access_token = (
        get_access_token_model().objects.select_related("application").filter(token_checksum=checksum).first()
    )
    if access_token is None:
        raise AuthenticationFailed("Invalid credentials.", code="invalid_token")
    if access_token.is_expired():
        raise AuthenticationFailed("The OAuth2 access token has expired.", code="token_expired")
    client = (
        OAuthClient.objects.select_related("organization")
        .filter(application_id=access_token.application_id)
        .first()
    )
    if client is None:
        raise AuthenticationFailed("The OAuth2 application belongs to no organization.", code="invalid_token")
    granted = set(access_token.scope.split()) & set(client.scopes)
    return AuthContext(
        organization=client.organization,
        scopes=frozenset(granted),
        method="oauth2",
        oauth_client_id=access_token.application.client_id if access_token.application else None,
    )


class PipelineAuthentication(BaseAuthentication):
    """DRF reads what the authentication middleware resolved; it never authenticates again."""

    def authenticate(self, request: Request) -> tuple[Any, AuthContext] | None:
        context = request_notes(request).auth
        if context is None:
            return None
        return context.user, context

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class PipelineAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "accounts.authentication.PipelineAuthentication"
    name = ["ApiKeyBearer", "ApiKeyHeader", "JWT", "OAuth2"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        # Any one of them: a requirement object per scheme (one object naming all four would
        # ask for the four credentials together).
        return [{name: []} for name in self.name]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (sk-…) as a bearer token.",
            },
            {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key."},
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT from POST /api/v1/auth/token/.",
            },
            {
                "type": "oauth2",
                "flows": {
                    "clientCredentials": {
                        "tokenUrl": "/oauth/token/",
                        "scopes": dict(settings.OAUTH2_PROVIDER["SCOPES"]),
                    }
                },
            },
        ]
