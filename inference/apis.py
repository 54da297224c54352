from __future__ import annotations

from collections.abc import Iterator

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.context import auth_context
from accounts.scopes import GENERATE
from common.errors import NotFound
from inference import openai_format
from inference.models import GenerationJob
from inference.serializers import GenerateInputSerializer, GenerateOutputSerializer
from inference.services import (
    GenerationOutcome,
    GenerationSession,
    generation_run,
    generation_stream_open,
    handler_get,
    job_create,
    job_get,
)


def sse_response(events: Iterator[bytes], *, session: GenerationSession) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    # The server closes the response however it ends, even when the client left before the body
    # started and the generator never ran: the reservation is settled then.
    response._resource_closers.append(session.close)  # type: ignore[attr-defined]  # Django API without stubs
    return response


def stream_error_event(exc: Exception) -> bytes:
    from common.errors import APIError, error_body

    if isinstance(exc, APIError):
        body = error_body(
            message=exc.message, type=exc.type or "server_error", param=exc.param, code=exc.code
        )
    else:
        body = error_body(message="The generation failed.", type="server_error", code="internal_error")
    return openai_format.sse(body, event="error")


class StatusApi(APIView):
    required_scope = None

    @extend_schema(
        tags=["inference"],
        responses=inline_serializer(
            "EngineStatus",
            {
                "state": serializers.ChoiceField(choices=["idle", "loading", "ready", "failed"]),
                "backend": serializers.CharField(),
                "model": serializers.CharField(),
                "device": serializers.CharField(),
                "error": serializers.CharField(allow_null=True),
                "active_requests": serializers.IntegerField(),
                "queued_requests": serializers.IntegerField(),
                "max_batch_size": serializers.IntegerField(),
                "context_length": serializers.IntegerField(allow_null=True),
            },
        ),
        description="Whether the model is loading, ready or failed; which model, backend and device; how busy.",
    )
    def get(self, request: Request) -> Response:
        return Response(vars(handler_get().status()))


class GenerateApi(APIView):
    required_scope = GENERATE
    reserves_budget = True  # its rate limits are counted with the reservation (usage.ratelimit)

    @extend_schema(
        tags=["inference"],
        request=GenerateInputSerializer,
        responses={200: GenerateOutputSerializer},
        description=(
            "Generates text from a prompt. With `stream: true` the answer is server-sent events: "
            '`event: token` with `{"text"}` deltas, then one `event: done` carrying the whole '
            "`{output, meta}` body."
        ),
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        serializer = GenerateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        context = auth_context(request)
        spec = serializer.to_spec()
        request_id = request._request.request_id  # type: ignore[attr-defined]
        if serializer.validated_data["stream"]:
            session = generation_stream_open(
                context=context, spec=spec, request_id=request_id, endpoint="generate"
            )
            return sse_response(_generate_events(session), session=session)
        outcome = generation_run(context=context, spec=spec, request_id=request_id, endpoint="generate")
        return Response(outcome.generate_body())


def _generate_events(session: GenerationSession) -> Iterator[bytes]:
    try:
        for event in session.events():
            if isinstance(event, GenerationOutcome):
                yield openai_format.sse(event.generate_body(), event="done")
            else:
                yield openai_format.sse({"text": event}, event="token")
    except Exception as exc:
        yield stream_error_event(exc)


class JobOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=GenerationJob.Status.values)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    result = GenerateOutputSerializer(allow_null=True)
    error = serializers.JSONField(allow_null=True)


class JobCreateApi(APIView):
    required_scope = GENERATE

    @extend_schema(
        tags=["inference"],
        request=GenerateInputSerializer,
        responses={202: JobOutputSerializer},
        description="Queues a generation for a worker (client → API → Redis → worker → result). Poll the job.",
    )
    def post(self, request: Request) -> Response:
        serializer = GenerateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if serializer.validated_data["stream"]:
            raise serializers.ValidationError({"stream": "Jobs do not stream; use generate/ to stream."})
        job = job_create(
            context=auth_context(request),
            spec=serializer.to_spec(),
            request_id=request._request.request_id,  # type: ignore[attr-defined]
        )
        job.refresh_from_db()
        response = Response(JobOutputSerializer(job).data, status=202)
        response["Location"] = f"/api/v1/jobs/{job.pk}/"
        return response


class JobDetailApi(APIView):
    required_scope = GENERATE

    @extend_schema(
        tags=["inference"],
        responses={200: JobOutputSerializer, 404: OpenApiResponse(description="Unknown job")},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = job_get(organization=auth_context(request).organization, job_id=str(job_id))
        if job is None:
            raise NotFound("No such job.", param="job_id")
        return Response(JobOutputSerializer(job).data)
