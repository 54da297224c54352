"""The console's webhooks page: the organization's endpoints, each with its latest deliveries,
one made (its signing secret shown this once) or deleted through the API's own services, so the
rules (public addresses only, at most 16 endpoints) and the audit log are the API's."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_POST

from accounts.scopes import ORGANIZATION_READ, ORGANIZATION_WRITE
from common.errors import APIError
from console.context import Console, console_page
from console.forms import WebhookCreateForm
from webhooks import services

RECENT_DELIVERIES = 5


@console_page(scope=ORGANIZATION_READ)
def webhooks(request: HttpRequest, console: Console) -> HttpResponse:
    form = WebhookCreateForm(request.POST or None)
    created: dict[str, Any] | None = None
    status = 200
    if request.method == "POST":
        if not console.can(ORGANIZATION_WRITE):
            context = {"console": console, "scope": ORGANIZATION_WRITE}
            return render(request, "console/forbidden.html", context, status=403)
        if form.is_valid():
            data = form.cleaned_data
            try:
                endpoint, secret = services.endpoint_create(
                    organization=console.organization,
                    actor=console.actor(request),
                    url=data["url"],
                    events=data["events"],
                    description=data["description"],
                )
            except APIError as error:
                form.add_error(error.param if error.param in form.fields else None, error.message)
                status = error.status
            else:
                created = {"endpoint": endpoint, "secret": secret}
                form = WebhookCreateForm()
        else:
            status = 400
    endpoints = [
        {
            "endpoint": endpoint,
            "deliveries": list(services.delivery_list(endpoint=endpoint)[:RECENT_DELIVERIES]),
        }
        for endpoint in services.endpoint_list(organization=console.organization)
    ]
    context = {"console": console, "form": form, "created": created, "endpoints": endpoints}
    return render(request, "console/webhooks.html", context, status=status)


@require_POST
@console_page(scope=ORGANIZATION_WRITE)
def webhook_delete(request: HttpRequest, console: Console, endpoint_id: int) -> HttpResponse:
    try:
        endpoint = services.endpoint_get(organization=console.organization, endpoint_id=endpoint_id)
        services.endpoint_delete(
            organization=console.organization, actor=console.actor(request), endpoint=endpoint
        )
    except APIError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Deleted the endpoint {endpoint.url}: it receives nothing more.")
    return HttpResponseRedirect("/console/webhooks/")
