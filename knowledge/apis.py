from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiRequest,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.context import auth_context
from accounts.scopes import DOCUMENTS_READ, DOCUMENTS_WRITE, RAG
from common.errors import NotFound
from common.openapi import ERROR_REF, SSE_EVENT_SCHEMA
from common.parsers import declared_content_length
from common.request_notes import request_notes
from inference import openai_format
from inference.services import (
    GenerationSession,
    embedding_model_named_in,
    generation_run,
    generation_stream_open,
    model_named_in,
)
from inference.streaming import generate_events, sse_response
from knowledge import services
from knowledge.models import Document
from knowledge.selectors import document_get, document_list
from knowledge.serializers import (
    DocumentOutputSerializer,
    DocumentTextInputSerializer,
    DocumentUploadOutputSerializer,
    DocumentUploadSerializer,
    RagInputSerializer,
    RagOutputSerializer,
    RagSourceSerializer,
    SearchInputSerializer,
    SourceSerializer,
)
from usage.admission import RouteCost
from usage.tokens import TokenEstimate, count_text


class DocumentPagination(LimitOffsetPagination):
    max_limit = 100  # a larger `limit` is clamped, not handed to the database to overflow


def _document_or_404(request: Request, document_id: int) -> Document:
    document = document_get(organization=auth_context(request).organization, document_id=document_id)
    if document is None:
        raise NotFound("No such document.", param="document_id")
    return document


class DocumentListCreateApi(APIView):
    pagination_class = DocumentPagination  # read by the schema as well

    @property
    def required_scope(self) -> str:
        return DOCUMENTS_WRITE if self.request.method == "POST" else DOCUMENTS_READ

    @extend_schema(tags=["knowledge"], responses=DocumentOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            document_list(organization=auth_context(request).organization), request, view=self
        )
        return paginator.get_paginated_response(DocumentOutputSerializer(page, many=True).data)

    @extend_schema(
        tags=["knowledge"],
        request={
            "multipart/form-data": DocumentUploadSerializer,
            "application/json": DocumentTextInputSerializer,
        },
        responses={
            202: DocumentUploadOutputSerializer,
            200: OpenApiResponse(
                DocumentUploadOutputSerializer,
                description="The same content, uploaded before: that document.",
            ),
            413: OpenApiResponse(ERROR_REF, description="Larger than KNOWLEDGE_MAX_UPLOAD_BYTES."),
            415: OpenApiResponse(
                ERROR_REF, description="Not a document this API reads: its bytes and name tell the format."
            ),
        },
        examples=[
            OpenApiExample(
                "text",
                value={"title": "Notes", "text": "Classes bundle data and behaviour."},
                request_only=True,
            )
        ],
        description="Plain text, Markdown, HTML, PDF or DOCX. Answers 202; poll the document until `indexed` "
        "or `failed`. The same content uploaded again returns the existing document.",
    )
    def post(self, request: Request) -> Response:
        context = auth_context(request)
        # Before request.FILES, which reads the body.
        services.upload_declared_size_check(declared_bytes=declared_content_length(request.META))
        if "file" in request.FILES:
            form = DocumentUploadSerializer(data=request.data)
            form.is_valid(raise_exception=True)
            outcome = services.document_upload_file(
                organization=context.organization,
                upload=form.validated_data["file"],
                title=form.validated_data.get("title") or None,
            )
        else:
            serializer = DocumentTextInputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            title = serializer.validated_data["title"]
            outcome = services.document_upload(
                organization=context.organization,
                data=serializer.validated_data["text"].encode(),
                filename=f"{title}.txt",
                content_type="text/plain",
                title=title,
            )
        outcome.document.refresh_from_db(
            fields=[
                "status",
                "error",
                "chunks_total",
                "chunks_embedded",
                "attempts",
                "indexed_at",
                "updated_at",
            ]
        )
        body = {**DocumentOutputSerializer(outcome.document).data, "duplicate": outcome.duplicate}
        return Response(body, status=200 if outcome.duplicate else 202)


class DocumentDetailApi(APIView):
    @property
    def required_scope(self) -> str:
        return DOCUMENTS_WRITE if self.request.method == "DELETE" else DOCUMENTS_READ

    @extend_schema(tags=["knowledge"], responses=DocumentOutputSerializer)
    def get(self, request: Request, document_id: int) -> Response:
        return Response(DocumentOutputSerializer(_document_or_404(request, document_id)).data)

    @extend_schema(tags=["knowledge"], responses={204: None})
    def delete(self, request: Request, document_id: int) -> HttpResponse:
        services.document_delete(document=_document_or_404(request, document_id))
        return Response(status=204)


class DocumentRetryApi(APIView):
    required_scope = DOCUMENTS_WRITE

    @extend_schema(
        tags=["knowledge"],
        request=None,
        responses={
            202: DocumentOutputSerializer,
            409: OpenApiResponse(ERROR_REF, description="Only a failed or stalled document can be retried."),
        },
    )
    def post(self, request: Request, document_id: int) -> Response:
        document = services.document_retry(document=_document_or_404(request, document_id))
        return Response(DocumentOutputSerializer(document).data, status=202)


def _query_estimate(body: dict[str, Any]) -> TokenEstimate | None:
    query = body.get("query")
    return TokenEstimate(prompt_tokens=count_text(query), max_tokens=0) if isinstance(query, str) else None


class SearchApi(APIView):
    required_scope = DOCUMENTS_READ
    # Metered as embeddings are: the query's tokens, admitted before it is embedded.
    cost = RouteCost(
        endpoint="search",
        estimate=_query_estimate,
        model=embedding_model_named_in,
        requests_limit="search_requests_per_minute",
    )

    @extend_schema(
        tags=["knowledge"],
        request=SearchInputSerializer,
        responses=inline_serializer("SearchResults", {"data": SourceSerializer(many=True)}),
    )
    def post(self, request: Request) -> Response:
        serializer = SearchInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        notes = request_notes(request)
        hits = services.search_metered(
            context=auth_context(request),
            query=data["query"],
            top_k=data["top_k"],
            document_ids=data.get("document_ids"),
            min_score=data.get("min_score"),
            mode=data["mode"],
            request_id=notes.request_id,
            admitted=notes.reservation,
        )
        return Response({"object": "list", "data": SourceSerializer(hits, many=True).data})


class RagApi(APIView):
    required_scope = RAG
    # Admitted on the question alone, before the query is embedded or searched; the hold grows
    # to the exact prompt, passages included, before generation.
    cost = RouteCost(endpoint="rag", end_user_field="user_id", model=model_named_in)

    @extend_schema(
        tags=["knowledge"],
        request=OpenApiRequest(RagInputSerializer),
        responses={
            (200, "application/json"): RagOutputSerializer,
            (200, "text/event-stream"): SSE_EVENT_SCHEMA,
        },
        description="generate/ over the caller's documents: retrieves `top_k` passages, keeps by rank "
        "those the model's context has room for beside `max_tokens` (the last one cut at a sentence "
        "boundary; 400 `context_length_exceeded` when not one fits), answers with numbered sources, and "
        "returns exactly those in `sources`, with the `used_tokens` each takes. With `stream: true`: "
        "`event: sources`, then `event: token` deltas, then `event: done` with the whole body.",
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        serializer = RagInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        context = auth_context(request)
        notes = request_notes(request)
        retrieved = services.rag_retrieve(
            context=context,
            spec=serializer.to_spec(),
            top_k=serializer.validated_data["top_k"],
            document_ids=serializer.validated_data.get("document_ids"),
            mode=serializer.validated_data["mode"],
        )
        cited: dict[str, Any] = {"sources": RagSourceSerializer(retrieved.sources, many=True).data}
        if retrieved.note:
            cited["note"] = retrieved.note
        if serializer.validated_data["stream"]:
            session = generation_stream_open(
                context=context,
                spec=retrieved.spec,
                request_id=notes.request_id,
                endpoint="rag",
                admitted=notes.reservation,
            )
            return sse_response(_rag_events(session, cited), session=session)
        outcome = generation_run(
            context=context,
            spec=retrieved.spec,
            request_id=notes.request_id,
            endpoint="rag",
            admitted=notes.reservation,
        )
        return Response({**outcome.generate_body(), **cited})


def _rag_events(session: GenerationSession, cited: dict[str, Any]) -> Iterator[bytes]:
    """`event: sources` first (cite while the answer streams), then generate/'s events; the
    final `done` carries the sources too."""
    yield openai_format.sse(cited, event="sources")
    yield from generate_events(session, extra=cited)
