"""Generation jobs: queued on Celery workers, polled by their id. A job's budget is held from the
moment it is queued; the worker adopts that hold, re-checks who queued it, and runs it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

import kombu.exceptions
import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.context import AuthContext
from accounts.models import APIKey, Membership
from common.errors import APIError, ServiceUnavailable
from inference.models import GenerationJob
from inference.services import (
    GenerationOutcome,
    GenerationSpec,
    generation_check,
    generation_execute,
)
from usage.services import Reservation, quota_hold, quota_reserve, reservation_adopt, reservation_refund
from webhooks.services import webhook_emit

logger = logging.getLogger(__name__)


def job_create(
    *, context: AuthContext, spec: GenerationSpec, request_id: str, admitted: Reservation | None = None
) -> GenerationJob:
    """Queues a generation. Its budget is reserved now (429 at once when it does not fit) and
    held for as long as the job may wait for a worker (`JOB_MAX_WAIT_SECONDS`)."""
    checked = generation_check(organization=context.organization, spec=spec, request_id=request_id)
    amount = checked.prompt_tokens + spec.max_tokens
    reservation = quota_hold(
        admitted=admitted,
        context=context,
        end_user=spec.end_user,
        endpoint="jobs",
        model=checked.served,
        request_id=request_id,
        amount=amount,
        prompt_tokens=checked.prompt_tokens,
        queued_for_seconds=settings.JOB_MAX_WAIT_SECONDS,
    )
    try:
        job = GenerationJob.objects.create(
            organization=context.organization,
            api_key=context.api_key,
            user=context.user,
            auth_method=context.method,
            request_id=request_id,
            reservation_id=reservation.reservation_id,
            reserved_tokens=amount,
            payload=spec.to_payload(),
        )
    except BaseException:
        reservation.cancel()
        raise
    transaction.on_commit(partial(_enqueue, job=job, reservation=reservation))
    return job


def _enqueue(*, job: GenerationJob, reservation: Reservation) -> None:
    """Hands the job to the broker. One the broker cannot take (Redis down) fails at once and
    releases its hold: a 503 to retry, nothing charged, nothing left waiting."""
    from inference.tasks import run_generation_job

    try:
        run_generation_job.delay(str(job.pk))
    except (kombu.exceptions.OperationalError, redis.RedisError) as exc:
        reservation.cancel()
        GenerationJob.objects.filter(pk=job.pk).update(
            status=GenerationJob.Status.FAILED,
            error={
                "message": "The job queue was unavailable; nothing was charged.",
                "type": "service_unavailable",
                "param": None,
                "code": "store_unavailable",
            },
            finished_at=timezone.now(),
        )
        raise ServiceUnavailable(
            "The job queue is unavailable; nothing was charged. Retry shortly.",
            code="store_unavailable",
            headers={"Retry-After": "1"},
        ) from exc


def job_get(*, organization: Any, job_id: str) -> GenerationJob | None:
    return GenerationJob.objects.filter(organization=organization, pk=job_id).first()


def _job_context(job: GenerationJob) -> AuthContext:
    """The caller of a queued job as it is now, not as it was when the job was queued: a job
    whose key was revoked, expired or deleted, whose member left or was deactivated, or whose
    organization was suspended while it waited does not run."""
    from accounts.authentication import AuthenticationFailed, PermissionDenied, api_key_check_usable
    from accounts.scopes import ALL_SCOPES, GENERATE, effective_scopes

    organization = job.organization
    if not organization.is_active:
        raise PermissionDenied(
            f"The organization '{organization.slug}' was suspended before the job started.",
            code="organization_suspended",
        )
    membership = None
    if job.user_id is not None:
        membership = Membership.objects.filter(user_id=job.user_id, organization=organization).first()
        if membership is None or job.user is None or not job.user.is_active:
            raise AuthenticationFailed(
                "The member who queued the job is no longer active in the organization.",
                code="member_inactive",
            )
    api_key = None
    granted: Iterable[str] = ALL_SCOPES
    if job.auth_method == "api_key":
        api_key = (
            APIKey.objects.filter(pk=job.api_key_id, organization=organization).first()
            if job.api_key_id
            else None
        )
        if api_key is None:
            raise AuthenticationFailed(
                "The job's API key was deleted before it started.", code="api_key_revoked"
            )
        api_key_check_usable(api_key=api_key)
        granted = api_key.scopes
    # As the credential would be resolved now: a member's reach is its role's.
    scopes = effective_scopes(granted=granted, role=membership.role if membership is not None else None)
    if GENERATE not in scopes:
        raise PermissionDenied("The job's caller no longer has the 'generate' scope.", code="missing_scope")
    return AuthContext(
        organization=organization,
        scopes=scopes,
        method="job",
        user=job.user,
        membership=membership,
        api_key=api_key,
    )


def _job_generate(job: GenerationJob, spec: GenerationSpec) -> GenerationOutcome:
    """Runs on the reservation the job was queued with. When that one is gone — it expired
    while the job waited, or the worker that ran an earlier attempt died and its expiry charged
    what it held — the earlier attempt's charge is refunded (the job's result was never
    delivered, so the tenant got nothing for it) and this attempt reserves anew."""
    started = time.perf_counter()
    reservation = (
        reservation_adopt(reservation_id=job.reservation_id, amount=job.reserved_tokens)
        if job.reservation_id
        else None
    )
    try:
        context = _job_context(job)
    except APIError:
        if reservation is not None:
            reservation.cancel()
        raise
    try:
        checked = generation_check(organization=context.organization, spec=spec, request_id=job.request_id)
    except BaseException:
        if reservation is not None:
            reservation.release(status="error")
        raise
    if reservation is not None:
        reservation.model = checked.served
    else:
        if job.reservation_id:
            reservation_refund(reservation_id=job.reservation_id)
        amount = checked.prompt_tokens + spec.max_tokens
        reservation = quota_reserve(
            context=context,
            end_user=spec.end_user,
            endpoint="jobs",
            model=checked.served,
            request_id=job.request_id,
            amount=amount,
            prompt_tokens=checked.prompt_tokens,
        )
        job.reservation_id, job.reserved_tokens = reservation.reservation_id, amount
        job.save(update_fields=["reservation_id", "reserved_tokens"])
    return generation_execute(
        handler=checked.handler, request=checked.request, reservation=reservation, started=started
    )


def job_run(*, job_id: str) -> None:
    """Runs a queued job. A job redelivered after its worker died runs again from the start,
    on its reservation if it still holds, on a new one otherwise."""
    with transaction.atomic():
        job = (
            GenerationJob.objects.select_for_update(of=("self",))
            .select_related("organization", "user")
            .filter(pk=job_id)
            .first()
        )
        if job is None or job.status in (GenerationJob.Status.SUCCEEDED, GenerationJob.Status.FAILED):
            return
        job.status = GenerationJob.Status.RUNNING
        job.attempts += 1
        job.started_at = timezone.now()
        job.save(update_fields=["status", "attempts", "started_at"])
    spec = GenerationSpec.from_payload(job.payload)
    try:
        outcome = _job_generate(job, spec)
    except APIError as error:
        job.status = GenerationJob.Status.FAILED
        job.error = {
            "message": error.message,
            "type": error.type or "invalid_request_error",
            "param": error.param,
            "code": error.code,
        }
    except Exception:
        logger.exception("Generation job %s failed", job.pk)
        job.status = GenerationJob.Status.FAILED
        job.error = {
            "message": "The server had an error while running the job.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    else:
        job.status = GenerationJob.Status.SUCCEEDED
        job.result = outcome.generate_body()
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "result", "error", "finished_at"])
    webhook_emit(
        organization_id=job.organization_id,
        type="job.completed" if job.status == GenerationJob.Status.SUCCEEDED else "job.failed",
        data={"job": {"id": str(job.pk), "status": job.status, "error": job.error}},
    )
