"""Self-service sign-up: a new organization on DEFAULT_PLAN, its owner, signed in at once.

It composes the accounts services (user, organization, membership) with billing's plan
assignment, so it lives in billing (apps depend accounts ← usage ← billing).

An address that already has an account signs up a new organization for that account when the
password is the account's; otherwise the answer is `signup_failed`, which names no reason. What
stays observable is unavoidable: a new address with an acceptable password always gets an
organization, so a `signup_failed` tells that the address has an account (with another
password). Every attempt costs one password hash whatever the address, and counts against the
client address's throttle, so that probing is slow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.password_validation import validate_password
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from accounts.audit import Actor, audit_record
from accounts.models import Membership, Organization, User
from accounts.services import organization_create, user_create
from accounts.throttling import SignInAttempt, SignInThrottled
from billing.models import Plan, Subscription
from billing.services import subscription_change
from common.errors import APIError, NotFound, ServiceUnavailable

logger = logging.getLogger(__name__)

SLUG_MAX_LENGTH = 48  # of the name's part; a suffix that makes it unique may follow


class SignupFailed(APIError):
    code = "signup_failed"


class SignupThrottled(SignInThrottled):
    pass


def signup_check_enabled() -> None:
    if not settings.SIGNUP_ENABLED:
        raise NotFound("Sign-up is not available on this server.", code="signup_disabled")


def signup_attempt(*, ip: str) -> SignInAttempt:
    """Takes a slot on the client address's counter (`SIGNUP_THROTTLE_IP_ATTEMPTS` per
    `SIGNUP_THROTTLE_WINDOW_SECONDS`, in the shared cache, as sign-in's throttle counts) or
    raises `SignupThrottled` holding none. The caller gives the slot back for a request refused
    before any account was looked at (an invalid body, a weak password)."""
    now = time.time()
    length = max(1, int(settings.SIGNUP_THROTTLE_WINDOW_SECONDS))
    window = int(now // length)
    digest = hashlib.sha256(ip.encode()).hexdigest()[:32]  # no address in Redis
    key = f"signup:attempts:{digest}:{window}"
    cache.add(key, 0, timeout=length + 1)
    try:
        taken = cache.incr(key)
    except ValueError:  # expired between the two calls: this window is over
        return SignInAttempt()
    attempt = SignInAttempt(keys=[key])
    if taken > int(settings.SIGNUP_THROTTLE_IP_ATTEMPTS):
        attempt.release()
        retry_after = max(1, math.ceil((window + 1) * length - now))
        raise SignupThrottled(
            f"Too many sign-ups from your address. Try again in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )
    return attempt


def signup_check_password(*, email: str, password: str) -> None:
    """Django's password validators (AUTH_PASSWORD_VALIDATORS), as for any new account."""
    try:
        validate_password(password, user=User(email=email))
    except ValidationError as error:
        raise APIError(" ".join(error.messages), param="password", code="invalid_password") from error


def _default_plan() -> Plan | None:
    slug = settings.DEFAULT_PLAN
    if not slug:
        return None
    plan = Plan.objects.filter(slug=slug).first()
    if plan is None:
        logger.error("DEFAULT_PLAN is %r, but there is no such plan: sign-up is refused", slug)
        raise ServiceUnavailable("Sign-up is not available right now.", code="signup_unavailable")
    return plan


def _organization_create(*, name: str, owner: User) -> Organization:
    """A new organization with a slug made from its name, unique: the name's slug, then with a
    number, then with a random suffix (a concurrent sign-up may take a slug first)."""
    base = slugify(name)[:SLUG_MAX_LENGTH].strip("-") or "org"
    candidates = [base, *(f"{base}-{number}" for number in range(2, 10))]
    taken = set(Organization.objects.filter(slug__in=candidates).values_list("slug", flat=True))
    free = [slug for slug in candidates if slug not in taken]
    for slug in [*free[:1], *(f"{base}-{secrets.token_hex(3)}" for _ in range(5))]:
        try:
            with transaction.atomic():
                return organization_create(slug=slug, name=name, owner=owner)
        except IntegrityError:
            continue
        except APIError as error:
            if error.status != 409:
                raise
    raise RuntimeError("Could not find a free organization slug.")


def _password_matches(*, user: User, password: str) -> bool:
    """Whether `password` is the active account's, at the cost of one password hash in every
    case (Django skips the hash for an account without a usable password)."""
    if not user.has_usable_password():
        make_password(password)
        return False
    return user.check_password(password) and user.is_active


@dataclass(frozen=True)
class SignUp:
    organization: Organization
    membership: Membership
    subscription: Subscription | None
    created_user: bool


@transaction.atomic
def signup_create(*, email: str, password: str, organization_name: str, actor: Actor) -> SignUp:
    """Creates the organization on DEFAULT_PLAN with its owner: a new account for a new
    address, the existing account when `password` is its password (`SignupFailed` otherwise).
    The password must have passed `signup_check_password`. `actor` is the anonymous caller;
    the audit events name the owner."""
    email = email.strip().lower()
    plan = _default_plan()
    user = User.objects.filter(email=email).first()
    created_user = user is None
    if user is None:
        user = user_create(email=email, password=password)  # one password hash
    elif not _password_matches(user=user, password=password):
        raise SignupFailed(
            "Sign-up failed. If you already have an account, sign up with its password, or sign in.",
        )
    organization = _organization_create(name=organization_name.strip(), owner=user)
    membership = Membership.objects.select_related("user").get(organization=organization, user=user)
    owner = dataclasses.replace(actor, user=user, label=user.email)
    audit_record(
        organization=organization,
        actor=owner,
        action="organization.created",
        target=organization,
        target_label=organization.slug,
        changes={
            "name": organization.name,
            "slug": organization.slug,
            "owner": user.email,
            "new_account": created_user,
            "plan": plan.slug if plan is not None else None,
        },
    )
    subscription = (
        subscription_change(organization=organization, plan=plan, actor=owner) if plan is not None else None
    )
    return SignUp(
        organization=organization,
        membership=membership,
        subscription=subscription,
        created_user=created_user,
    )
