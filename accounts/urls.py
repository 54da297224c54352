from __future__ import annotations

from django.urls import path

from accounts import apis, organization_apis

urlpatterns = [
    path("auth/token/", apis.TokenObtainApi.as_view(), name="auth-token"),
    path("auth/token/refresh/", apis.TokenRefreshApi.as_view(), name="auth-token-refresh"),
    path("organization/keys/", organization_apis.KeyListApi.as_view(), name="organization-keys"),
    path(
        "organization/keys/<int:key_id>/", organization_apis.KeyDetailApi.as_view(), name="organization-key"
    ),
    path(
        "organization/keys/<int:key_id>/rotate/",
        organization_apis.KeyRotateApi.as_view(),
        name="organization-key-rotate",
    ),
    path("organization/members/", organization_apis.MemberListApi.as_view(), name="organization-members"),
    path(
        "organization/members/<int:membership_id>/",
        organization_apis.MemberDetailApi.as_view(),
        name="organization-member",
    ),
    path(
        "organization/invitations/<int:invitation_id>/",
        organization_apis.InvitationRevokeApi.as_view(),
        name="organization-invitation",
    ),
    path("organization/audit/", organization_apis.AuditListApi.as_view(), name="organization-audit"),
    path("invitations/accept/", organization_apis.InvitationAcceptApi.as_view(), name="invitation-accept"),
]
