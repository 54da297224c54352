"""Signing in and out of the console, joining with an invitation, choosing the organization,
and the short-lived API token the console's pages call the API with."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate, login, logout
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework_simplejwt.settings import api_settings

from accounts.audit import actor_anonymous
from accounts.invitations import invitation_accept, invitation_get_pending
from accounts.models import User
from accounts.serializers import jwt_pair_for
from accounts.throttling import SignInThrottled, client_ip, sign_in_attempt
from billing.signup import (
    SignupFailed,
    signup_attempt,
    signup_check_enabled,
    signup_check_password,
    signup_create,
)
from common.errors import APIError
from console.context import SESSION_ORGANIZATION, Console, console_for, console_page
from console.forms import AcceptInvitationForm, SignInForm, SignUpForm


def _next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or "/console/"
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return "/console/"


def landing(request: HttpRequest) -> HttpResponse:
    return render(request, "console/landing.html", {"signed_in": request.user.is_authenticated})


@require_http_methods(["GET", "POST"])
def sign_in(request: HttpRequest) -> HttpResponse:
    form = SignInForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"].strip().lower()
        try:
            attempt = sign_in_attempt(ip=client_ip(request), account_kind="email", account=email)
        except SignInThrottled as throttled:
            form.add_error(None, throttled.message)
            status = 429
        else:
            user = authenticate(request, username=email, password=form.cleaned_data["password"])
            if user is None:  # wrong credentials: the attempt keeps its slots
                form.add_error(None, "The email or the password is wrong.")
                status = 400
            else:
                attempt.release()
                login(request, user)
                return HttpResponseRedirect(_next_url(request))
    elif request.method == "POST":
        status = 400
    context = {
        "form": form,
        "next": _next_url(request),
        "signup_enabled": settings.SIGNUP_ENABLED,
    }
    return render(request, "console/login.html", context, status=status)


@require_http_methods(["GET", "POST"])
def sign_up(request: HttpRequest) -> HttpResponse:
    """The API's sign-up (`billing.signup`: same throttle, validators and answers), then signed in."""
    try:
        signup_check_enabled()
    except APIError:
        raise Http404("Sign-up is not available on this server.") from None
    form = SignUpForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            attempt = signup_attempt(ip=client_ip(request))
        except APIError as error:
            form.add_error(None, error.message)
            status = error.status
        else:
            try:
                signup_check_password(email=data["email"], password=data["password"])
                created = signup_create(
                    email=data["email"],
                    password=data["password"],
                    organization_name=data["organization_name"],
                    actor=actor_anonymous(request, label=data["email"]),
                )
            except SignupFailed as error:  # an account's password was tried: the slot stays taken
                form.add_error(None, error.message)
                status = error.status
            except APIError as error:
                attempt.release()
                form.add_error("password" if error.param == "password" else None, error.message)
                status = error.status
            else:
                login(request, created.membership.user, backend="django.contrib.auth.backends.ModelBackend")
                request.session[SESSION_ORGANIZATION] = created.organization.pk
                return HttpResponseRedirect("/console/")
    elif request.method == "POST":
        status = 400
    return render(request, "console/signup.html", {"form": form}, status=status)


@require_POST
def sign_out(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponseRedirect("/console/login/")


@require_POST
@console_page()
def switch_organization(request: HttpRequest, console: Console) -> HttpResponse:
    chosen = request.POST.get("organization", "")
    for membership in console.memberships:
        if str(membership.organization_id) == chosen:
            request.session[SESSION_ORGANIZATION] = membership.organization_id
    return HttpResponseRedirect("/console/")


@require_POST
@console_page()
def api_token(request: HttpRequest, console: Console) -> JsonResponse:
    """A JWT access token for the signed-in member and organization: the console's scripts call
    the API with it, as any client would (the API never reads the session cookie)."""
    access = jwt_pair_for(membership=console.membership)["access"]
    lifetime = int(api_settings.ACCESS_TOKEN_LIFETIME.total_seconds())
    return JsonResponse({"access": access, "expires_in": lifetime})


@require_http_methods(["GET", "POST"])
def accept_invitation(request: HttpRequest) -> HttpResponse:
    token = request.POST.get("token") or request.GET.get("token") or ""
    form = AcceptInvitationForm(request.POST or None, initial={"token": token})
    try:
        invitation = invitation_get_pending(token=token)
    except APIError as error:
        return render(request, "console/accept.html", {"error": error.message}, status=error.status)
    has_account = User.objects.filter(email=invitation.email).exists()
    status = 200
    if request.method == "POST" and form.is_valid():
        password = form.cleaned_data["password"] or None
        try:
            accepted = invitation_accept(
                token=token, password=password, actor=actor_anonymous(request, label="invitee")
            )
        except APIError as error:
            form.add_error("password" if error.param == "password" else None, error.message)
            status = 400
        else:
            membership = accepted.membership
            if password is not None:
                login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
                request.session[SESSION_ORGANIZATION] = membership.organization_id
                return HttpResponseRedirect("/console/")
            return HttpResponseRedirect(
                f"/console/login/?next=/console/&joined={membership.organization.slug}"
            )
    context = {
        "form": form,
        "invitation": invitation,
        "has_account": has_account,
        "current": console_for(request),
    }
    return render(request, "console/accept.html", context, status=status)
