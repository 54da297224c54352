from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from knowledge import services
from knowledge.models import Document


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = (
        "title",
        "organization",
        "format",
        "status",
        "chunks_embedded",
        "chunks_total",
        "attempts",
        "created_at",
    )
    list_filter = ("status", "format")
    search_fields = ("title", "filename", "organization__slug")
    exclude = ("data",)
    readonly_fields = (
        "organization",
        "title",
        "filename",
        "content_type",
        "format",
        "size_bytes",
        "content_hash",
        "status",
        "error",
        "chunks_total",
        "chunks_embedded",
        "attempts",
        "heartbeat_at",
        "created_at",
        "updated_at",
        "indexed_at",
    )
    actions = ("retry",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        return super().get_queryset(request).defer("data")

    @admin.action(description="Retry ingestion of the selected failed documents")
    def retry(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        retried = 0
        for document in queryset.filter(status=Document.Status.FAILED):
            services.document_retry(document=document)
            retried += 1
        self.message_user(request, f"Queued {retried} document(s) again.")
