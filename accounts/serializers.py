from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer
from rest_framework_simplejwt.serializers import TokenRefreshSerializer as SimpleJWTTokenRefreshSerializer
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import APIKey, AuditEvent, BudgetPeriod, Invitation, Membership, User
from accounts.scopes import ALL_SCOPES
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


# Self-service: keys, members, invitations, the audit log.

SCOPE_CHOICES = ALL_SCOPES


class UserRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()


class APIKeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    object = serializers.SerializerMethodField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The key's first characters, enough to recognize it.")
    scopes = serializers.ListField(child=serializers.CharField())
    user = UserRefSerializer(allow_null=True, help_text="The member it acts for; null: organization-wide.")
    token_budget = serializers.IntegerField(allow_null=True)
    budget_period = serializers.CharField()
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    replaced_by = serializers.SerializerMethodField(help_text="The prefix of the key a rotation made.")

    def get_object(self, api_key: APIKey) -> str:
        return "api_key"

    def get_replaced_by(self, api_key: APIKey) -> str | None:
        return api_key.replaced_by.prefix if api_key.replaced_by is not None else None


class IssuedAPIKeySerializer(APIKeySerializer):
    secret = serializers.CharField(help_text="The key itself, shown this once and never again.")


MAX_TOKENS_FIELD = 2**53  # JSON integers stay exact below it
MAX_INT32 = 2**31 - 1


class APIKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, validators=[NON_BLANK])
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=SCOPE_CHOICES),
        required=False,
        max_length=len(SCOPE_CHOICES),
        help_text="Default: everything both you and the member it acts for may do.",
    )
    user = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_INT32,
        help_text="The member (user id) the key acts for; null: the whole organization. Default: you.",
    )
    expires_in_days = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=3650)
    token_budget = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_TOKENS_FIELD
    )
    budget_period = serializers.ChoiceField(
        choices=BudgetPeriod.values, required=False, default=BudgetPeriod.MONTH
    )
    requests_per_minute = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_INT32
    )
    tokens_per_minute = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_INT32
    )


class APIKeyUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, validators=[NON_BLANK], required=False)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=SCOPE_CHOICES), required=False, max_length=len(SCOPE_CHOICES)
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    token_budget = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_TOKENS_FIELD
    )
    budget_period = serializers.ChoiceField(choices=BudgetPeriod.values, required=False)
    requests_per_minute = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_INT32
    )
    tokens_per_minute = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_INT32
    )


class APIKeyRotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=7 * 24 * 3600,
        default=0,
        help_text="How long the old key keeps working (0: it stops at once).",
    )


class MemberSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The membership's id.")
    object = serializers.SerializerMethodField()
    user = UserRefSerializer()
    role = serializers.CharField()
    token_budget = serializers.IntegerField(allow_null=True)
    budget_period = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_object(self, membership: Membership) -> str:
        return "member"


class InvitationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    object = serializers.SerializerMethodField()
    email = serializers.EmailField()
    role = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()

    def get_object(self, invitation: Invitation) -> str:
        return "invitation"


class CreatedInvitationSerializer(InvitationSerializer):
    accept_url = serializers.CharField(help_text="The link emailed to the invitee; it may be shared by hand.")


class InviteSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Membership.Role.values, default=Membership.Role.MEMBER)


class MemberUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.Role.values)


class InvitationAcceptSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=128, validators=[NON_BLANK])
    password = serializers.CharField(
        max_length=128,
        required=False,
        help_text="Required to create a new account; with an existing account, signs you in at once.",
    )


class InvitationAcceptedSerializer(serializers.Serializer):
    organization = serializers.DictField()
    user = UserRefSerializer()
    role = serializers.CharField()
    created_account = serializers.BooleanField()
    access = serializers.CharField(allow_null=True, help_text="A JWT pair when you gave a password.")
    refresh = serializers.CharField(allow_null=True)


class AuditEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    actor = serializers.SerializerMethodField()
    action = serializers.CharField()
    target = serializers.SerializerMethodField()
    changes = serializers.JSONField()
    ip = serializers.IPAddressField(allow_null=True)
    request_id = serializers.CharField()

    @extend_schema_field(
        inline_serializer(
            "AuditActor",
            {
                "type": serializers.CharField(),
                "label": serializers.CharField(),
                "user": serializers.IntegerField(allow_null=True),
            },
        )
    )
    def get_actor(self, event: AuditEvent) -> dict[str, Any]:
        return {"type": event.actor_type, "label": event.actor_label, "user": event.actor_user_id}

    @extend_schema_field(
        inline_serializer(
            "AuditTarget",
            {
                "type": serializers.CharField(),
                "id": serializers.CharField(),
                "label": serializers.CharField(),
            },
        )
    )
    def get_target(self, event: AuditEvent) -> dict[str, str]:
        return {"type": event.target_type, "id": event.target_id, "label": event.target_label}
