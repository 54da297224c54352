"""What authentication puts on the request (``request.auth_context``) for every later stage:
rate limiting, token counting, views."""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import APIKey, Membership, Organization, User


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
