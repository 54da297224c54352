from __future__ import annotations

from django import forms

from accounts.models import BudgetPeriod, Membership
from accounts.scopes import ALL_SCOPES
from webhooks.models import EVENT_TYPES


class SignInForm(forms.Form):
    email = forms.EmailField(label="Email", max_length=254)
    password = forms.CharField(label="Password", strip=False, widget=forms.PasswordInput, max_length=128)


class SignUpForm(forms.Form):
    email = forms.EmailField(label="Email", max_length=254)
    password = forms.CharField(label="Password", strip=False, widget=forms.PasswordInput, max_length=128)
    organization_name = forms.CharField(label="Organization name", max_length=200)


class AcceptInvitationForm(forms.Form):
    token = forms.CharField(widget=forms.HiddenInput, max_length=128)
    password = forms.CharField(
        label="Password", strip=False, widget=forms.PasswordInput, max_length=128, required=False
    )


class KeyCreateForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100)
    scopes = forms.MultipleChoiceField(
        label="Scopes",
        choices=[(scope, scope) for scope in ALL_SCOPES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: everything you and the key's member may do.",
    )
    user = forms.TypedChoiceField(label="Acts for", coerce=int, empty_value=None, required=False)
    expires_in_days = forms.IntegerField(
        label="Expires in (days)", min_value=1, max_value=3650, required=False
    )
    token_budget = forms.IntegerField(label="Token budget", min_value=1, max_value=2**53, required=False)
    budget_period = forms.ChoiceField(label="Budget period", choices=BudgetPeriod.choices, initial="month")
    requests_per_minute = forms.IntegerField(
        label="Requests per minute", min_value=1, max_value=2**31 - 1, required=False
    )
    tokens_per_minute = forms.IntegerField(
        label="Tokens per minute", min_value=1, max_value=2**31 - 1, required=False
    )

    def __init__(self, *args: object, members: list[Membership], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        choices = [("", "The whole organization")] + [(m.user_id, m.user.email) for m in members]
        self.fields["user"].choices = choices  # type: ignore[attr-defined]


class RotateForm(forms.Form):
    grace_seconds = forms.IntegerField(
        label="Old key keeps working for (seconds)", min_value=0, max_value=7 * 24 * 3600, initial=0
    )


class InviteForm(forms.Form):
    email = forms.EmailField(label="Email", max_length=254)
    role = forms.ChoiceField(label="Role", choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Membership.Role.choices)


class PlanForm(forms.Form):
    plan = forms.SlugField(label="Plan", max_length=64)


class WebhookCreateForm(forms.Form):
    url = forms.URLField(label="URL", max_length=2000, assume_scheme="https")
    events = forms.MultipleChoiceField(
        label="Events", choices=[(event, event) for event in EVENT_TYPES], widget=forms.CheckboxSelectMultiple
    )
    description = forms.CharField(label="Description", max_length=200, required=False)
