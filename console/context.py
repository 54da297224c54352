"""Who is using the console and for which organization: the signed-in user (Django's session)
and the membership they chose (`console_org` in the session; the first one otherwise). Every
page resolves it once through `console_page`, and acts through the same services as the API,
with the same scopes as the member's JWT."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render

from accounts.audit import Actor, actor_from_context
from accounts.context import AuthContext
from accounts.models import Membership, Organization, User
from accounts.throttling import client_ip
from common.request_notes import request_notes

SESSION_ORGANIZATION = "console_org"


@dataclass(frozen=True)
class Console:
    user: User
    membership: Membership
    memberships: list[Membership]

    @property
    def organization(self) -> Organization:
        return self.membership.organization

    @property
    def scopes(self) -> frozenset[str]:
        return self.membership.scopes

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    def auth_context(self) -> AuthContext:
        return AuthContext(
            organization=self.organization,
            scopes=self.scopes,
            method="session",
            user=self.user,
            membership=self.membership,
        )

    def actor(self, request: HttpRequest) -> Actor:
        return actor_from_context(
            context=self.auth_context(), ip=client_ip(request), request_id=request_notes(request).request_id
        )


def console_for(request: HttpRequest) -> Console | None:
    """The console of the signed-in user, or None when they are signed out, inactive, or in no
    active organization."""
    user = request.user
    if not user.is_authenticated or not user.is_active:
        return None
    memberships = list(
        Membership.objects.filter(user=user, organization__status=Organization.Status.ACTIVE)
        .select_related("organization")
        .order_by("organization__name")
    )
    if not memberships:
        return None
    chosen_id = request.session.get(SESSION_ORGANIZATION)
    membership = next((m for m in memberships if m.organization_id == chosen_id), memberships[0])
    return Console(user=user, membership=membership, memberships=memberships)  # type: ignore[arg-type]


def console_page(*, scope: str | None = None) -> Callable[..., Callable[..., HttpResponse]]:
    """A console view: signed in (else to the sign-in page, back here after), in an
    organization, with `scope` (else a 403 page that says which)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            console = console_for(request)
            if console is None:
                if request.user.is_authenticated:
                    return render(request, "console/no_organization.html", status=403)
                return HttpResponseRedirect(f"/console/login/?{urlencode({'next': request.get_full_path()})}")
            if scope is not None and not console.can(scope):
                context = {"console": console, "scope": scope}
                return render(request, "console/forbidden.html", context, status=403)
            return view(request, console, *args, **kwargs)

        return wrapper

    return decorate
