from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.authentication import AuthenticationFailed, PermissionDenied
from accounts.context import AuthContext


class HasRequiredScope(BasePermission):
    """Every API view names the scope it needs in `required_scope` (None: any authenticated
    caller). The check raises, so the error names the missing scope."""

    def has_permission(self, request: Request, view: Any) -> bool:
        context = request.auth
        if not isinstance(context, AuthContext):
            raise AuthenticationFailed("Authentication is required.", code="missing_credentials")
        scope = getattr(view, "required_scope", None)
        if scope is not None and not context.has_scope(scope):
            raise PermissionDenied(
                f"This request needs the '{scope}' scope, which your credentials do not have.",
                param=scope,
                code="missing_scope",
            )
        return True
