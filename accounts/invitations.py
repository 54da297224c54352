"""Invitations: an owner or admin invites an email address with a role; whoever holds the token
sent there joins once, before it expires (creating their account if they have none)."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.audit import Actor, audit_record
from accounts.models import Invitation, Membership, Organization, User
from accounts.services import membership_create, user_create
from common.errors import APIError

logger = logging.getLogger(__name__)

ACCEPT_PATH = "/console/invitations/accept/"


class InvitationInvalid(APIError):
    """404 for a token that opens nothing (unknown, or replaced by a newer invitation); 409 for
    one that did, but no longer can (used, expired)."""

    status = 404
    code = "invalid_invitation"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invitation_accept_url(*, base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{ACCEPT_PATH}?token={token}"


def check_may_grant_role(*, actor: Actor, role: str) -> None:
    """Only an owner makes owners (an admin, an organization-wide key or an OAuth2 client
    cannot)."""
    if role not in Membership.Role.values:
        raise APIError(f"Unknown role '{role}'. Roles: {', '.join(Membership.Role.values)}.", param="role")
    if role == Membership.Role.OWNER and actor.role != Membership.Role.OWNER:
        raise APIError(
            "Only an owner can make someone an owner.", param="role", code="owner_required", status=403
        )


def _send(*, invitation: Invitation, accept_url: str) -> None:
    organization = invitation.organization
    try:
        send_mail(
            subject=f"You are invited to {organization.name}",
            message=(
                f"You have been invited to join {organization.name} as {invitation.role}.\n\n"
                f"Accept the invitation: {accept_url}\n\n"
                f"It expires on {invitation.expires_at:%Y-%m-%d %H:%M} UTC and can be used once."
            ),
            from_email=None,
            recipient_list=[invitation.email],
        )
    except Exception:  # the answer carries accept_url, which the inviter can share by hand
        logger.exception("invitation email to %s could not be sent", invitation.email)


@dataclass(frozen=True)
class CreatedInvitation:
    invitation: Invitation
    accept_url: str


@transaction.atomic
def invitation_create(
    *, organization: Organization, actor: Actor, email: str, role: str, base_url: str
) -> CreatedInvitation:
    """Invites `email` with `role`, replacing a pending invitation to the same address, and
    emails the link once the transaction commits."""
    email = email.strip().lower()
    check_may_grant_role(actor=actor, role=role)
    if Membership.objects.filter(organization=organization, user__email=email).exists():
        raise APIError(f"{email} is already a member.", param="email", code="conflict", status=409)
    now = timezone.now()
    Invitation.objects.filter(
        organization=organization, email=email, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=now)
    token = secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            invitation = Invitation.objects.create(
                organization=organization,
                email=email,
                role=role,
                token_hash=_token_hash(token),
                invited_by=actor.user,
                expires_at=now + timedelta(seconds=settings.INVITATION_TTL_SECONDS),
            )
    except IntegrityError as error:  # a concurrent invitation to the same address won
        raise APIError(
            f"{email} is being invited by someone else right now.", param="email", code="conflict", status=409
        ) from error
    accept_url = invitation_accept_url(base_url=base_url, token=token)
    audit_record(
        organization=organization,
        actor=actor,
        action="member.invited",
        target=invitation,
        target_label=email,
        changes={"email": email, "role": role, "expires_at": invitation.expires_at},
    )
    transaction.on_commit(lambda: _send(invitation=invitation, accept_url=accept_url))
    return CreatedInvitation(invitation=invitation, accept_url=accept_url)


@transaction.atomic
def invitation_revoke(*, organization: Organization, actor: Actor, invitation: Invitation) -> Invitation:
    if invitation.accepted_at is None and invitation.revoked_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(
            organization=organization,
            actor=actor,
            action="member.invitation_revoked",
            target=invitation,
            target_label=invitation.email,
        )
    return invitation


def invitation_get_pending(*, token: str) -> Invitation:
    """The pending invitation this token opens, or InvitationInvalid saying why not."""
    invitation = (
        Invitation.objects.select_related("organization").filter(token_hash=_token_hash(token)).first()
    )
    return _check_pending(invitation)


def _check_pending(invitation: Invitation | None) -> Invitation:
    if invitation is None or invitation.revoked_at is not None:
        raise InvitationInvalid("This invitation is not valid (it may have been replaced).", param="token")
    if invitation.accepted_at is not None:
        raise InvitationInvalid("This invitation was already used.", param="token", status=409)
    if invitation.expires_at <= timezone.now():
        raise InvitationInvalid("This invitation has expired: ask for a new one.", param="token", status=409)
    return invitation


@dataclass(frozen=True)
class AcceptedInvitation:
    membership: Membership
    created_user: bool


@transaction.atomic
def invitation_accept(*, token: str, password: str | None, actor: Actor) -> AcceptedInvitation:
    """Joins the invited address to the organization, once: the invitation's row is locked, so
    two concurrent acceptances of one token make one membership. Someone new chooses a password
    (Django's validators); someone with an account joins without one, and gives theirs only to
    be signed in at once (checked: a wrong one joins no one)."""
    invitation = _check_pending(
        Invitation.objects.select_for_update()
        .select_related("organization")
        .filter(token_hash=_token_hash(token))
        .first()
    )
    user = User.objects.filter(email=invitation.email).first()
    created_user = user is None
    if user is None:
        if not password:
            raise APIError("Choose a password for your new account.", param="password")
        try:
            validate_password(password, user=User(email=invitation.email))
        except ValidationError as error:
            raise APIError(" ".join(error.messages), param="password", code="invalid_password") from error
        user = user_create(email=invitation.email, password=password)
    elif password is not None and not user.check_password(password):
        raise APIError("The password is not this account's.", param="password", code="invalid_password")
    if not user.is_active:
        raise InvitationInvalid("This account is deactivated.", param="token", status=409)
    membership = Membership.objects.filter(organization=invitation.organization, user=user).first()
    if membership is None:
        membership = membership_create(organization=invitation.organization, user=user, role=invitation.role)
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    audit_record(
        organization=invitation.organization,
        actor=Actor(type=actor.type, label=user.email, user=user, ip=actor.ip, request_id=actor.request_id),
        action="member.joined",
        target=membership,
        target_label=user.email,
        changes={"role": membership.role, "invitation": invitation.pk, "new_account": created_user},
    )
    return AcceptedInvitation(membership=membership, created_user=created_user)
