from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from accounts.serializers import OrganizationTokenObtainSerializer


@extend_schema(tags=["auth"], summary="Obtain a JWT pair for a member of an organization")
class TokenObtainApi(TokenObtainPairView):
    serializer_class = OrganizationTokenObtainSerializer  # type: ignore[assignment]
    authentication_classes = ()
    permission_classes = (AllowAny,)  # type: ignore[assignment]  # the stubs type it as an empty tuple


@extend_schema(tags=["auth"], summary="Refresh a JWT access token")
class TokenRefreshApi(TokenRefreshView):
    authentication_classes = ()
    permission_classes = (AllowAny,)  # type: ignore[assignment]  # the stubs type it as an empty tuple
