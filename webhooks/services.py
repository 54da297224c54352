"""Tenant webhooks: endpoints, events, and deliveries signed as Stripe signs its own.

An event (`webhook_emit`) becomes one delivery per endpoint that asked for its type, written in
the transaction of what happened and sent once it commits, by a Celery task. A delivery is
retried with exponential backoff (`WEBHOOK_FIRST_RETRY_SECONDS`, doubling) until the endpoint
answers 2xx or `WEBHOOK_RETRY_HOURS` have passed since the event; beat sends again any delivery
whose task was lost (`webhook_deliveries_due`).

A receiver checks `Webhook-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
against its secret and refuses an old `t`. Addresses that resolve to private, loopback,
link-local or otherwise non-public networks are refused, at creation and before each attempt
(unless `WEBHOOK_ALLOW_PRIVATE`), and an attempt connects to an address it checked: the host is
resolved once, so a name that answers a public address to the check and a private one a moment
later (DNS rebinding) cannot send the request inside the network. Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.audit import Actor, audit_record
from accounts.models import Organization
from common.errors import APIError, NotFound
from common.sealed import SealedSecretUnreadable, reseal, seal
from webhooks.models import EVENT_TYPES, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

MAX_ENDPOINTS = 16
USER_AGENT = "llm-platform-webhooks/1"


class AddressRefused(APIError):
    code = "webhook_address_refused"


def _public_addresses(host: str) -> list[str]:
    """The addresses `host` resolves to, or AddressRefused when any is not public."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise AddressRefused(f"{host} does not resolve.", param="url") from error
    addresses = sorted({str(info[4][0]) for info in infos})
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return addresses
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise AddressRefused(f"{host} resolves to {address}, which is not a public address.", param="url")
    return addresses


def _post_pinned(
    parts: SplitResult, addresses: list[str], *, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    """POSTs to the URL at one of the checked `addresses` (the next one when an address does
    not connect), naming the host in `Host` and, over TLS, in SNI, which is also the name the
    certificate is verified against."""
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    with httpx.Client(timeout=settings.WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False) as client:
        for index, address in enumerate(addresses):
            ip = ipaddress.ip_address(address.split("%")[0])
            host = f"[{ip}]" if ip.version == 6 else str(ip)
            netloc = host if parts.port is None else f"{host}:{parts.port}"
            try:
                return client.post(
                    urlunsplit(parts._replace(netloc=netloc)),
                    content=content,
                    headers={**headers, "Host": parts.netloc},
                    extensions=extensions,
                )
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise
    raise AddressRefused(f"{parts.hostname} does not resolve.", param="url")


def url_check(url: str) -> list[str]:
    """An http(s) URL with a host whose every address is public (see the module's docstring):
    those addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise APIError("The URL must be http:// or https:// with a host.", param="url")
    if parts.username or parts.password:
        raise APIError("The URL may not carry credentials.", param="url")
    return _public_addresses(parts.hostname)


# Endpoints.


def endpoint_list(*, organization: Organization) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(organization=organization, deleted_at__isnull=True)


def endpoint_get(*, organization: Organization, endpoint_id: int) -> WebhookEndpoint:
    endpoint = endpoint_list(organization=organization).filter(pk=endpoint_id).first()
    if endpoint is None:
        raise NotFound("No such webhook endpoint.", param="id")
    return endpoint


@transaction.atomic
def endpoint_create(
    *, organization: Organization, actor: Actor, url: str, events: Iterable[str], description: str = ""
) -> tuple[WebhookEndpoint, str]:
    """The endpoint and its signing secret, which is kept sealed and not shown again."""
    chosen = list(dict.fromkeys(events))
    unknown = [event for event in chosen if event not in EVENT_TYPES]
    if unknown or not chosen:
        raise APIError(
            f"Choose events among: {', '.join(EVENT_TYPES)}"
            + (f" (unknown: {', '.join(unknown)})." if unknown else "."),
            param="events",
        )
    url_check(url)
    Organization.objects.select_for_update().filter(pk=organization.pk).first()  # serializes the count
    if endpoint_list(organization=organization).count() >= MAX_ENDPOINTS:
        raise APIError(f"An organization has at most {MAX_ENDPOINTS} webhook endpoints.", param="url")
    secret = "whsec_" + secrets.token_urlsafe(32)
    endpoint = WebhookEndpoint.objects.create(
        organization=organization, url=url, events=chosen, description=description, secret_sealed=seal(secret)
    )
    audit_record(
        organization=organization,
        actor=actor,
        action="webhook.created",
        target=endpoint,
        target_label=url,
        changes={"url": url, "events": chosen},
    )
    return endpoint, secret


@transaction.atomic
def secrets_reseal() -> int:
    """Every endpoint's secret sealed again under the current key, all or none (one that cannot
    be opened raises SealedSecretUnreadable and changes nothing)."""
    endpoints = list(WebhookEndpoint.objects.select_for_update().only("pk", "secret_sealed"))
    for endpoint in endpoints:
        endpoint.secret_sealed = reseal(endpoint.secret_sealed)
    WebhookEndpoint.objects.bulk_update(endpoints, ["secret_sealed"])
    return len(endpoints)


@transaction.atomic
def endpoint_delete(*, organization: Organization, actor: Actor, endpoint: WebhookEndpoint) -> None:
    """Stops the endpoint's deliveries (pending ones are not sent); its history stays listed."""
    endpoint.deleted_at = timezone.now()
    endpoint.save(update_fields=["deleted_at"])
    endpoint.deliveries.filter(status=WebhookDelivery.Status.PENDING).update(
        status=WebhookDelivery.Status.FAILED, last_error="endpoint deleted", next_attempt_at=None
    )
    audit_record(
        organization=organization,
        actor=actor,
        action="webhook.deleted",
        target=endpoint,
        target_label=endpoint.url,
    )


def delivery_list(*, endpoint: WebhookEndpoint) -> QuerySet[WebhookDelivery]:
    return endpoint.deliveries.all()


# Events and deliveries.


def _enqueue(delivery_ids: list[int]) -> None:
    from webhooks.tasks import webhook_deliver

    for delivery_id in delivery_ids:
        try:
            webhook_deliver.delay(delivery_id)
        except Exception:  # the broker is down: beat's sweep sends it later
            logger.warning("webhook delivery %s could not be queued; beat will retry it", delivery_id)


def webhook_emit(*, organization_id: int, type: str, data: dict[str, Any]) -> list[WebhookDelivery]:
    """Records the event for every endpoint of the organization that asked for `type`; the
    deliveries are sent once the surrounding transaction commits."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {type!r}")
    endpoints = [
        endpoint
        for endpoint in WebhookEndpoint.objects.filter(
            organization_id=organization_id, deleted_at__isnull=True
        )
        if type in endpoint.events
    ]
    if not endpoints:
        return []
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps(
        {"id": event_id, "type": type, "created": int(time.time()), "data": data},
        separators=(",", ":"),
        default=str,
    )
    now = timezone.now()
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(endpoint=endpoint, event_id=event_id, event_type=type, body=body, next_attempt_at=now)
        for endpoint in endpoints
    )
    ids = [delivery.pk for delivery in deliveries]
    transaction.on_commit(lambda: _enqueue(ids))
    return deliveries


def signature_header(*, secret: str, body: str, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_delay(*, attempts: int) -> timedelta:
    """After the `attempts`-th failure: the first retry delay, doubling, at most six hours."""
    seconds = settings.WEBHOOK_FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, 6 * 3600))


def _claim(*, delivery_id: int) -> WebhookDelivery | None:
    """Takes the delivery for one attempt: a pending one whose time has come gets its next
    attempt time pushed past the attempt's timeout, in one UPDATE, so that the task and beat's
    sweep never send it twice at once (and a worker that dies mid-attempt leaves it due again)."""
    now = timezone.now()
    lease = now + timedelta(seconds=2 * settings.WEBHOOK_TIMEOUT_SECONDS + 5)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=lease)
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)


def _send(delivery: WebhookDelivery) -> tuple[int | None, str]:
    """POSTs the delivery once: (status code, error); no error on a 2xx."""
    endpoint = delivery.endpoint
    try:
        addresses = url_check(endpoint.url)
        parts = urlsplit(endpoint.url)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Webhook-Signature": signature_header(
                secret=endpoint.signing_secret(), body=delivery.body, timestamp=timestamp
            ),
            "Webhook-Id": delivery.event_id,
        }
        response = _post_pinned(parts, addresses, content=delivery.body.encode(), headers=headers)
    except AddressRefused as refused:
        return None, refused.message
    except SealedSecretUnreadable as unreadable:
        logger.error("Webhook endpoint %s: its secret cannot be read: %s", endpoint.pk, unreadable)
        return None, f"the endpoint's signing secret cannot be read here: {unreadable}"[:300]
    except httpx.HTTPError as failure:
        return None, f"{type(failure).__name__}: {failure}"[:300]
    if 200 <= response.status_code < 300:
        return response.status_code, ""
    return response.status_code, f"answered {response.status_code}"


def delivery_attempt(*, delivery_id: int) -> WebhookDelivery | None:
    """Sends a pending delivery whose time has come, once, and records the outcome: succeeded
    on 2xx; otherwise the next attempt's time, or failed once the retry window is over. None
    when the delivery is not due (sent, failed, not yet time, or being sent elsewhere)."""
    delivery = _claim(delivery_id=delivery_id)
    if delivery is None:
        return None
    status_code, error = _send(delivery)
    now = timezone.now()
    delivery.attempts += 1
    delivery.last_status_code = status_code
    delivery.last_error = error
    if not error:
        delivery.status = WebhookDelivery.Status.SUCCEEDED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
    else:
        next_at = now + retry_delay(attempts=delivery.attempts)
        if next_at > delivery.created_at + timedelta(hours=settings.WEBHOOK_RETRY_HOURS):
            delivery.status = WebhookDelivery.Status.FAILED
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = next_at
    delivery.save(
        update_fields=[
            "attempts",
            "last_status_code",
            "last_error",
            "status",
            "delivered_at",
            "next_attempt_at",
        ]
    )
    return delivery


def deliveries_due(*, now: Any = None, limit: int = 500) -> list[int]:
    """Pending deliveries whose time has come (a retry, or a task the broker lost)."""
    now = now or timezone.now()
    return list(
        WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
