from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from accounts import services
from accounts.audit import actor_operator, audit_record
from accounts.invitations import invitation_revoke
from accounts.models import (
    APIKey,
    AuditEvent,
    EndUserBudget,
    Invitation,
    Membership,
    OAuthClient,
    Organization,
    User,
)
from common.errors import APIError

# Saves and deletes here need no cache invalidation of their own: `accounts.signals` follows
# every write of a key, organization, user or membership.


def _organization_of(obj: Any) -> Organization:
    return obj if isinstance(obj, Organization) else obj.organization


def _audit(request: HttpRequest, obj: Any, verb: str, changes: dict[str, Any] | None = None) -> None:
    name = obj._meta.model_name
    audit_record(
        organization=_organization_of(obj),
        actor=actor_operator(request),
        action=f"{name}.{verb}",
        target=obj,
        changes=changes,
    )


def _form_changes(form: Any) -> dict[str, Any]:
    return {name: form.cleaned_data.get(name) for name in form.changed_data if name != "password"}


class AuditedAdmin(admin.ModelAdmin):
    """Writes an audit event, as the operator, for every save and delete of the model and of its
    inlines: an operator's change shows in the tenant's audit log like one made through the API."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        _audit(request, obj, "updated" if change else "created", _form_changes(form))

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        if not isinstance(obj, Organization):  # its events go with it
            _audit(request, obj, "deleted")
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            if not isinstance(obj, Organization):
                _audit(request, obj, "deleted")
        super().delete_queryset(request, queryset)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            _audit(request, obj, "created")
        for obj, changed in formset.changed_objects:
            _audit(request, obj, "updated", {name: getattr(obj, name, None) for name in changed})
        for obj in formset.deleted_objects:
            _audit(request, obj, "deleted")


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ("email",)
    list_display = ("email", "full_name", "is_active", "is_staff", "date_joined")
    search_fields = ("email", "full_name")
    fieldsets = (
        (None, {"fields": ("email", "password", "full_name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)
    fields = ("user", "role", "token_budget", "budget_period")


class APIKeyInline(admin.TabularInline):
    model = APIKey
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("name", "prefix", "user", "scopes", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are created on their own page, which shows the secret once


class EndUserBudgetInline(admin.TabularInline):
    model = EndUserBudget
    extra = 0


@admin.register(Organization)
class OrganizationAdmin(AuditedAdmin):
    list_display = (
        "slug",
        "name",
        "status",
        "requests_per_minute",
        "tokens_per_minute",
        "token_quota",
        "created_at",
    )
    list_filter = ("status", "quota_period")
    search_fields = ("slug", "name", "billing_email")
    prepopulated_fields = {"slug": ("name",)}
    inlines = (MembershipInline, APIKeyInline, EndUserBudgetInline)
    actions = ("suspend", "reactivate")
    fieldsets = (
        (None, {"fields": ("name", "slug", "status", "status_reason")}),
        (
            "Limits",
            {
                "fields": (
                    "requests_per_minute",
                    "tokens_per_minute",
                    "token_quota",
                    "quota_period",
                    "end_user_token_budget",
                    "end_user_budget_period",
                    "search_requests_per_minute",
                    "ingestion_token_quota",
                    "allowed_models",
                )
            },
        ),
        ("Billing", {"fields": ("billing_email", "stripe_customer_id", "past_due_since")}),
        ("Usage", {"fields": ("usage_page",)}),
    )
    readonly_fields = ("usage_page",)

    @admin.display(description="Usage")
    def usage_page(self, obj: Organization) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:usage_organization", args=[obj.pk])
        return format_html('<a href="{}">Tokens per day</a>', url)

    @admin.action(description="Suspend selected organizations")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        for organization in queryset:
            services.organization_suspend(organization=organization, reason="Suspended by an operator")
            _audit(request, organization, "suspended")
        self.message_user(request, f"Suspended {queryset.count()} organization(s).")

    @admin.action(description="Reactivate selected organizations")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        for organization in queryset:
            services.organization_reactivate(organization=organization)
            _audit(request, organization, "reactivated")
        self.message_user(request, f"Reactivated {queryset.count()} organization(s).")


class APIKeyForm(forms.ModelForm):
    class Meta:
        model = APIKey
        fields = ("organization", "user", "name", "scopes")  # the admin's `fields` add the rest

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        organization = cleaned.get("organization")
        if organization is None:
            return cleaned
        scopes = cleaned.get("scopes")
        try:
            checked = services.api_key_scopes_check(
                organization=organization, user=cleaned.get("user"), scopes=scopes or None
            )
        except APIError as error:
            self.add_error("user" if error.param == "user" else "scopes", error.message)
        else:
            if scopes:
                cleaned["scopes"] = checked
        return cleaned


@admin.register(APIKey)
class APIKeyAdmin(AuditedAdmin):
    form = APIKeyForm
    list_display = ("name", "prefix", "organization", "user", "expires_at", "revoked_at", "last_used_at")
    list_filter = ("revoked_at", "organization")
    search_fields = ("name", "prefix", "organization__slug", "user__email")
    autocomplete_fields = ("organization", "user")
    readonly_fields = ("prefix", "last_used_at", "revoked_at", "created_at")
    actions = ("revoke",)
    fields = (
        "organization",
        "user",
        "name",
        "scopes",
        "requests_per_minute",
        "tokens_per_minute",
        "token_budget",
        "budget_period",
        "expires_at",
        "prefix",
        "revoked_at",
        "last_used_at",
        "created_at",
    )

    def save_model(self, request: HttpRequest, obj: APIKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        self._create(request, obj)
        _audit(request, obj, "created", _form_changes(form))

    def _create(self, request: HttpRequest, obj: APIKey) -> None:
        created, secret = services.api_key_create(
            organization=obj.organization, name=obj.name, user=obj.user, scopes=obj.scopes or None
        )
        services.api_key_update(
            api_key=created,
            requests_per_minute=obj.requests_per_minute,
            tokens_per_minute=obj.tokens_per_minute,
            token_budget=obj.token_budget,
            budget_period=obj.budget_period,
            expires_at=obj.expires_at,
        )
        obj.pk = created.pk
        obj.prefix = created.prefix
        obj.secret_hash = created.secret_hash
        messages.warning(request, f"The new key is {secret} — copy it now: it will not be shown again.")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[APIKey]) -> None:
        for api_key in queryset:
            services.api_key_revoke(api_key=api_key)
            _audit(request, api_key, "revoked")
        self.message_user(request, f"Revoked {queryset.count()} key(s).")


@admin.register(OAuthClient)
class OAuthClientAdmin(admin.ModelAdmin):
    list_display = ("application", "organization", "scopes", "created_at")
    search_fields = ("application__name", "organization__slug")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log, read-only: events are written by the changes they record, never edited."""

    list_display = ("created_at", "organization", "actor_label", "action", "target_label", "ip")
    list_filter = ("action", "actor_type")
    search_fields = ("organization__slug", "actor_label", "action", "target_label", "request_id")
    date_hierarchy = "created_at"
    list_select_related = ("organization",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ("email", "organization", "role", "created_at", "expires_at", "accepted_at", "revoked_at")
    list_filter = ("role",)
    search_fields = ("email", "organization__slug")
    readonly_fields = (
        "organization",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
    )
    exclude = ("token_hash",)
    actions = ("revoke",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # invitations are made through the API, which emails the token

    @admin.action(description="Revoke selected invitations")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Invitation]) -> None:
        for invitation in queryset:
            invitation_revoke(
                organization=invitation.organization, actor=actor_operator(request), invitation=invitation
            )
        self.message_user(request, f"Revoked {queryset.count()} invitation(s).")
