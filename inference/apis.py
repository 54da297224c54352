from __future__ import annotations

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.context import auth_context
from accounts.scopes import GENERATE
from common.errors import NotFound
from common.openapi import SSE_EVENT_SCHEMA
from common.request_notes import request_notes
from inference.jobs import job_create, job_get
from inference.models import GenerationJob
from inference.serializers import GenerateInputSerializer, GenerateOutputSerializer, JobInputSerializer
from inference.services import (
    generation_run,
    generation_stream_open,
    model_named_in,
    router_get,
)
from inference.streaming import generate_events, sse_response
from usage.admission import RouteCost


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
                "models": inline_serializer(
                    "ModelStatus",
                    {
                        "name": serializers.CharField(),
                        "aliases": serializers.ListField(child=serializers.CharField()),
                        "context_length": serializers.IntegerField(allow_null=True),
                        "fallbacks": serializers.ListField(child=serializers.CharField()),
                        "deployments": serializers.IntegerField(),
                        "available_deployments": serializers.IntegerField(),
                    },
                    many=True,
                ),
            },
        ),
        description="Whether the default model is loading, ready or failed; which model, backend and "
        "device; how busy. `models`: every model served, with how many of its deployments take "
        "requests now.",
    )
    def get(self, request: Request) -> Response:
        router = router_get()
        return Response({**vars(router.default_status()), "models": router.status()})


class GenerateApi(APIView):
    required_scope = GENERATE
    cost = RouteCost(endpoint="generate", end_user_field="user_id", model=model_named_in)

    @extend_schema(
        tags=["inference"],
        request=GenerateInputSerializer,
        responses={
            (200, "application/json"): GenerateOutputSerializer,
            (200, "text/event-stream"): SSE_EVENT_SCHEMA,
        },
        description=(
            "Generates text from a prompt. With `stream: true` the answer is server-sent events: "
            '`event: token` with `{"text"}` deltas, then one `event: done` carrying the whole '
            "`{output, meta}` body."
        ),
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        serializer = GenerateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        notes = request_notes(request)
        context, spec = auth_context(request), serializer.to_spec()
        if serializer.validated_data["stream"]:
            session = generation_stream_open(
                context=context,
                spec=spec,
                request_id=notes.request_id,
                endpoint="generate",
                admitted=notes.reservation,
            )
            return sse_response(generate_events(session), session=session)
        outcome = generation_run(
            context=context,
            spec=spec,
            request_id=notes.request_id,
            endpoint="generate",
            admitted=notes.reservation,
        )
        return Response(outcome.generate_body())


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
    cost = RouteCost(endpoint="jobs", end_user_field="user_id", model=model_named_in, queued=True)

    @extend_schema(
        tags=["inference"],
        request=JobInputSerializer,
        responses={202: JobOutputSerializer},
        description="Queues a generation for a worker (client → API → Redis → worker → result). Poll the job.",
    )
    def post(self, request: Request) -> Response:
        serializer = JobInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        notes = request_notes(request)
        job = job_create(
            context=auth_context(request),
            spec=serializer.to_spec(),
            request_id=notes.request_id,
            admitted=notes.reservation,
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
