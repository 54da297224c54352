"""platform.urls with /oauth/token/ routed to the throttled token view, as platform/urls.py is
to route it (issue #11); until it does, the OAuth throttling tests use this URLconf."""

from __future__ import annotations

from django.urls import path

from accounts.apis import OAuthTokenApi
from platform.urls import handler400, handler404, handler500
from platform.urls import urlpatterns as platform_urlpatterns

__all__ = ["handler400", "handler404", "handler500", "urlpatterns"]

urlpatterns = [path("oauth/token/", OAuthTokenApi.as_view(), name="oauth-token"), *platform_urlpatterns]
