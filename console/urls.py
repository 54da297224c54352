from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from console import auth_views as sign
from console import views
from console import webhook_views as hooks

urlpatterns = [
    path("", views.overview, name="console"),
    path("login/", sign.sign_in, name="console-login"),
    path("signup/", sign.sign_up, name="console-signup"),
    path("logout/", sign.sign_out, name="console-logout"),
    path("switch/", sign.switch_organization, name="console-switch"),
    path("token/", sign.api_token, name="console-token"),
    path("invitations/accept/", sign.accept_invitation, name="console-accept"),
    path(
        "password-reset/",
        auth_views.PasswordResetView.as_view(
            template_name="console/password_reset.html",
            email_template_name="console/password_reset_email.txt",
            subject_template_name="console/password_reset_subject.txt",
            success_url="/console/password-reset/sent/",
        ),
        name="console-password-reset",
    ),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="console/password_reset_sent.html"),
        name="console-password-reset-sent",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="console/password_reset_confirm.html", success_url="/console/login/?reset=1"
        ),
        name="console-password-reset-confirm",
    ),
    path("keys/", views.keys, name="console-keys"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="console-key-revoke"),
    path("keys/<int:key_id>/rotate/", views.key_rotate, name="console-key-rotate"),
    path("members/", views.members, name="console-members"),
    path("members/<int:membership_id>/role/", views.member_role, name="console-member-role"),
    path("members/<int:membership_id>/remove/", views.member_remove, name="console-member-remove"),
    path("usage/", views.usage, name="console-usage"),
    path("usage.csv", views.usage_csv, name="console-usage-csv"),
    path("documents/", views.documents, name="console-documents"),
    path("playground/", views.playground, name="console-playground"),
    path("billing/", views.billing, name="console-billing"),
    path("billing/invoices/<int:invoice_id>/", views.invoice, name="console-invoice"),
    path("webhooks/", hooks.webhooks, name="console-webhooks"),
    path("webhooks/<int:endpoint_id>/delete/", hooks.webhook_delete, name="console-webhook-delete"),
    path("audit/", views.audit, name="console-audit"),
]
