from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer
from rest_framework_simplejwt.serializers import TokenRefreshSerializer as SimpleJWTTokenRefreshSerializer
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import Membership, User
from accounts.selectors import membership_list_for_user
from common.validators import NON_BLANK


class OrganizationTokenObtainSerializer(TokenObtainPairSerializer):
    """Email and password, plus the organization to act for when the user belongs to several.
    The organization's id goes into the token as the `org` claim."""

    organization = serializers.SlugField(required=False, help_text="Organization slug.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # simplejwt adds them here; the schema then says what their blank check refuses.
        for name in (self.username_field, "password"):
            self.fields[name].validators.append(NON_BLANK)

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        attrs[self.username_field] = str(attrs[self.username_field]).strip().lower()  # stored lowercase
        super().validate(attrs)  # checks the password, updates last_login
        user: User = self.user  # type: ignore[assignment]
        memberships = list(membership_list_for_user(user=user))
        slug = attrs.get("organization")
        chosen: Membership | None
        if slug:
            chosen = next((m for m in memberships if m.organization.slug == slug), None)
            if chosen is None:
                raise serializers.ValidationError({"organization": "You are not a member of it."})
        elif len(memberships) == 1:
            chosen = memberships[0]
        else:
            raise serializers.ValidationError(
                {"organization": "You belong to several organizations (or none): name one."}
            )
        return jwt_pair_for(membership=chosen)


def jwt_pair_for(*, membership: Membership) -> dict[str, str]:
    """A JWT pair acting for `membership`: its organization in the `org` claim (sign-in, sign-up
    and an accepted invitation all answer one)."""
    refresh = RefreshToken.for_user(membership.user)
    refresh["org"] = membership.organization_id
    refresh["role"] = membership.role
    return {"refresh": str(refresh), "access": str(refresh.access_token)}


class TokenRefreshSerializer(SimpleJWTTokenRefreshSerializer):
    # Refresh tokens are not rotated: the answer carries a new access token only.
    refresh = serializers.CharField(write_only=True, validators=[NON_BLANK])


class LimitSerializer(serializers.Serializer):
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)


class MeOutputSerializer(serializers.Serializer):
    class OrganizationSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        slug = serializers.CharField()
        name = serializers.CharField()
        status = serializers.CharField()

    class UserSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        email = serializers.EmailField()
        role = serializers.CharField(allow_null=True)

    class KeySerializer(serializers.Serializer):
        name = serializers.CharField()
        prefix = serializers.CharField()
        expires_at = serializers.DateTimeField(allow_null=True)

    class BudgetSerializer(serializers.Serializer):
        scope = serializers.CharField()
        name = serializers.CharField()
        limit = serializers.IntegerField(allow_null=True)
        used = serializers.IntegerField()
        reserved = serializers.IntegerField()
        remaining = serializers.IntegerField(allow_null=True)
        period = serializers.CharField()
        resets_at = serializers.DateTimeField(allow_null=True)

    organization = OrganizationSerializer()
    user = UserSerializer(allow_null=True)
    api_key = KeySerializer(allow_null=True)
    auth_method = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    limits = serializers.DictField(child=LimitSerializer())
    budgets = BudgetSerializer(many=True)
