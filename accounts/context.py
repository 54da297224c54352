"""What authentication notes about the caller (`request_notes(request).auth`) for every later
stage: admission (rate limits, budgets) and views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accounts.models import APIKey, Membership, Organization, User
from common.request_notes import request_notes


@dataclass(frozen=True)
class AuthContext:
    organization: Organization
    scopes: frozenset[str]
    method: str  # "api_key" | "jwt" | "oauth2"
    user: User | None = None
    membership: Membership | None = None
    api_key: APIKey | None = None
    oauth_client_id: str | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def auth_context(request: Any) -> AuthContext:
    """The caller, as the authentication middleware resolved it, from a DRF or Django request."""
    context = getattr(request, "auth", None)
    if not isinstance(context, AuthContext):
        context = request_notes(request).auth
    if not isinstance(context, AuthContext):
        raise RuntimeError("auth_context() called on a request the API pipeline did not authenticate")
    return context
