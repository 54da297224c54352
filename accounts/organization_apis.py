"""The organization's own keys, members, invitations and audit log, for its owners and admins
(`organization:write`) and, read-only, whoever has `organization:read`. Each view validates,
calls one function of `accounts.self_service` or `accounts.invitations`, and serializes."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import invitations, self_service
from accounts.audit import actor_anonymous, actor_from_request, audit_event_list
from accounts.context import auth_context
from accounts.models import Invitation
from accounts.scopes import ORGANIZATION_READ, ORGANIZATION_WRITE
from accounts.serializers import (
    APIKeyCreateSerializer,
    APIKeyRotateSerializer,
    APIKeySerializer,
    APIKeyUpdateSerializer,
    AuditEventSerializer,
    CreatedInvitationSerializer,
    InvitationAcceptedSerializer,
    InvitationAcceptSerializer,
    InvitationSerializer,
    InviteSerializer,
    IssuedAPIKeySerializer,
    MemberSerializer,
    MemberUpdateSerializer,
    jwt_pair_for,
)
from accounts.throttling import client_ip, sign_in_attempt
from common.errors import NotFound


def _validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _list(items: Any, serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
    return {"object": "list", "data": serializer_class(items, many=True).data}


def _issued(issued: self_service.IssuedKey) -> dict[str, Any]:
    body = dict(APIKeySerializer(issued.api_key).data)
    body["secret"] = issued.secret
    return body


def _base_url(request: Request) -> str:
    return settings.PUBLIC_BASE_URL or request.build_absolute_uri("/")


_NOT_FOUND = {404: OpenApiResponse(description="No such item in your organization")}


class KeyListApi(APIView):
    @property
    def required_scope(self) -> str:
        return ORGANIZATION_READ if self.request.method == "GET" else ORGANIZATION_WRITE

    @extend_schema(
        tags=["organization"],
        operation_id="organization_keys_list",
        responses=inline_serializer(
            "APIKeyList", {"object": serializers.CharField(), "data": APIKeySerializer(many=True)}
        ),
        description="Every key of your organization, revoked ones included (never their secrets).",
    )
    def get(self, request: Request) -> Response:
        keys = self_service.api_key_list(organization=auth_context(request).organization)
        return Response(_list(keys, APIKeySerializer))

    @extend_schema(
        tags=["organization"],
        operation_id="organization_keys_create",
        request=APIKeyCreateSerializer,
        responses={201: IssuedAPIKeySerializer, **_NOT_FOUND},
        description="Creates a key; the answer's `secret` is the only time the key is shown.",
    )
    def post(self, request: Request) -> Response:
        data = _validated(APIKeyCreateSerializer, request.data)
        context = auth_context(request)
        default_user = context.user.pk if context.user is not None else None
        issued = self_service.key_issue(
            organization=context.organization,
            actor=actor_from_request(request),
            name=data["name"],
            for_user_id=data.get("user", default_user),
            scopes=data.get("scopes"),
            expires_in_days=data.get("expires_in_days"),
            token_budget=data.get("token_budget"),
            budget_period=data["budget_period"],
            requests_per_minute=data.get("requests_per_minute"),
            tokens_per_minute=data.get("tokens_per_minute"),
        )
        return Response(_issued(issued), status=201)


class KeyDetailApi(APIView):
    @property
    def required_scope(self) -> str:
        return ORGANIZATION_READ if self.request.method == "GET" else ORGANIZATION_WRITE

    @extend_schema(tags=["organization"], responses={200: APIKeySerializer, **_NOT_FOUND})
    def get(self, request: Request, key_id: int) -> Response:
        api_key = self_service.api_key_get(organization=auth_context(request).organization, key_id=key_id)
        return Response(APIKeySerializer(api_key).data)

    @extend_schema(
        tags=["organization"],
        request=APIKeyUpdateSerializer,
        responses={200: APIKeySerializer, **_NOT_FOUND},
        description="Changes the key's name, scopes (never beyond yours), expiry, limits or budget.",
    )
    def patch(self, request: Request, key_id: int) -> Response:
        data = _validated(APIKeyUpdateSerializer, request.data)
        organization = auth_context(request).organization
        api_key = self_service.api_key_get(organization=organization, key_id=key_id)
        api_key = self_service.key_change(
            organization=organization, actor=actor_from_request(request), api_key=api_key, fields=data
        )
        return Response(APIKeySerializer(api_key).data)

    @extend_schema(
        tags=["organization"],
        responses={200: APIKeySerializer, **_NOT_FOUND},
        description="Revokes the key: every server refuses it (401) from its next request.",
    )
    def delete(self, request: Request, key_id: int) -> Response:
        organization = auth_context(request).organization
        api_key = self_service.api_key_get(organization=organization, key_id=key_id)
        api_key = self_service.key_revoke(
            organization=organization, actor=actor_from_request(request), api_key=api_key
        )
        return Response(APIKeySerializer(api_key).data)


class KeyRotateApi(APIView):
    required_scope = ORGANIZATION_WRITE

    @extend_schema(
        tags=["organization"],
        request=APIKeyRotateSerializer,
        responses={201: IssuedAPIKeySerializer, **_NOT_FOUND},
        description=(
            "A new key with the same name, member, scopes, limits and expiry; the old one keeps "
            "working for `grace_seconds`, then answers 401. The new secret is shown this once."
        ),
    )
    def post(self, request: Request, key_id: int) -> Response:
        data = _validated(APIKeyRotateSerializer, request.data)
        organization = auth_context(request).organization
        api_key = self_service.api_key_get(organization=organization, key_id=key_id)
        issued = self_service.key_rotate(
            organization=organization,
            actor=actor_from_request(request),
            api_key=api_key,
            grace_seconds=data["grace_seconds"],
        )
        return Response(_issued(issued), status=201)


class MemberListApi(APIView):
    @property
    def required_scope(self) -> str:
        return ORGANIZATION_READ if self.request.method == "GET" else ORGANIZATION_WRITE

    @extend_schema(
        tags=["organization"],
        operation_id="organization_members_list",
        responses=inline_serializer(
            "MemberList",
            {
                "object": serializers.CharField(),
                "data": MemberSerializer(many=True),
                "invitations": InvitationSerializer(many=True),
            },
        ),
        description="The members, and the invitations not yet accepted.",
    )
    def get(self, request: Request) -> Response:
        organization = auth_context(request).organization
        body = _list(self_service.member_list(organization=organization), MemberSerializer)
        pending = self_service.invitation_list_pending(organization=organization)
        body["invitations"] = InvitationSerializer(pending, many=True).data
        return Response(body)

    @extend_schema(
        tags=["organization"],
        operation_id="organization_members_invite",
        request=InviteSerializer,
        responses={201: CreatedInvitationSerializer},
        description=(
            "Invites an email address with a role (only an owner invites an owner). The link is "
            "emailed and returned as `accept_url`; a new invitation to the same address replaces "
            "the pending one."
        ),
    )
    def post(self, request: Request) -> Response:
        data = _validated(InviteSerializer, request.data)
        created = invitations.invitation_create(
            organization=auth_context(request).organization,
            actor=actor_from_request(request),
            email=data["email"],
            role=data["role"],
            base_url=_base_url(request),
        )
        body = dict(InvitationSerializer(created.invitation).data)
        body["accept_url"] = created.accept_url
        return Response(body, status=201)


class MemberDetailApi(APIView):
    required_scope = ORGANIZATION_WRITE

    @extend_schema(
        tags=["organization"],
        request=MemberUpdateSerializer,
        responses={200: MemberSerializer, **_NOT_FOUND},
        description="Changes a member's role (only an owner makes or demotes an owner; the last owner stays).",
    )
    def patch(self, request: Request, membership_id: int) -> Response:
        data = _validated(MemberUpdateSerializer, request.data)
        organization = auth_context(request).organization
        membership = self_service.member_get(organization=organization, membership_id=membership_id)
        membership = self_service.member_role_change(
            organization=organization,
            actor=actor_from_request(request),
            membership=membership,
            role=data["role"],
        )
        return Response(MemberSerializer(membership).data)

    @extend_schema(
        tags=["organization"],
        responses={204: None, **_NOT_FOUND},
        description="Removes a member and revokes their keys here (only an owner removes an owner; the last stays).",
    )
    def delete(self, request: Request, membership_id: int) -> Response:
        organization = auth_context(request).organization
        membership = self_service.member_get(organization=organization, membership_id=membership_id)
        self_service.member_remove(
            organization=organization, actor=actor_from_request(request), membership=membership
        )
        return Response(status=204)


class InvitationRevokeApi(APIView):
    required_scope = ORGANIZATION_WRITE

    @extend_schema(tags=["organization"], responses={200: InvitationSerializer, **_NOT_FOUND})
    def delete(self, request: Request, invitation_id: int) -> Response:
        organization = auth_context(request).organization
        invitation = Invitation.objects.filter(organization=organization, pk=invitation_id).first()
        if invitation is None:
            raise NotFound("No such invitation.", param="id")
        invitation = invitations.invitation_revoke(
            organization=organization, actor=actor_from_request(request), invitation=invitation
        )
        return Response(InvitationSerializer(invitation).data)


class InvitationAcceptApi(APIView):
    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(
        tags=["auth"],
        request=InvitationAcceptSerializer,
        responses={
            200: InvitationAcceptedSerializer,
            400: OpenApiResponse(description="A password is needed, too weak, or not the account's"),
            404: OpenApiResponse(description="The token opens no invitation (unknown, or replaced)"),
            409: OpenApiResponse(description="The invitation was already used, or has expired"),
            429: OpenApiResponse(description="Too many attempts from this address"),
        },
        description=(
            "Joins the organization with the invitation's token, once. Someone new gives the "
            "password of their new account; someone with an account may give theirs to be "
            "signed in at once (a JWT pair in the answer). Limited per client address like sign-in."
        ),
    )
    def post(self, request: Request) -> Response:
        data = _validated(InvitationAcceptSerializer, request.data)
        attempt = sign_in_attempt(ip=client_ip(request), account_kind="invitation", account="")
        accepted = invitations.invitation_accept(
            token=data["token"],
            password=data.get("password"),
            actor=actor_anonymous(request, label="invitee"),
        )
        attempt.release()
        membership = accepted.membership
        tokens: dict[str, str | None] = {"access": None, "refresh": None}
        if data.get("password"):
            tokens.update(jwt_pair_for(membership=membership))
        organization = membership.organization
        body = {
            "organization": {"id": organization.pk, "slug": organization.slug, "name": organization.name},
            "user": membership.user,
            "role": membership.role,
            "created_account": accepted.created_user,
            **tokens,
        }
        return Response(InvitationAcceptedSerializer(body).data)


class AuditListApi(APIView):
    required_scope = ORGANIZATION_WRITE

    @extend_schema(
        tags=["organization"],
        operation_id="organization_audit_list",
        responses=inline_serializer(
            "AuditEventList",
            {
                "count": serializers.IntegerField(),
                "next": serializers.CharField(allow_null=True),
                "previous": serializers.CharField(allow_null=True),
                "results": AuditEventSerializer(many=True),
            },
        ),
        description="Who changed what in your organization, newest first (for owners and admins).",
    )
    def get(self, request: Request) -> Response:
        paginator = LimitOffsetPagination()
        events = audit_event_list(organization=auth_context(request).organization)
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AuditEventSerializer(page, many=True).data)
