"""django-oauth-toolkit integration: an application may be granted only the scopes its
organization gave it."""

from __future__ import annotations

from typing import Any

from oauth2_provider.scopes import SettingsScopes

from accounts.models import OAuthClient


class OrganizationScopes(SettingsScopes):
    def get_available_scopes(
        self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any
    ) -> list[str]:
        if application is None:
            return list(super().get_all_scopes())
        client = OAuthClient.objects.filter(application=application).first()
        return list(client.scopes) if client is not None else []

    def get_default_scopes(
        self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any
    ) -> list[str]:
        return self.get_available_scopes(application, request)
