from __future__ import annotations

from django.db import models

from accounts.models import Organization


class Document(models.Model):
    """An uploaded document and the state of its ingestion, which the caller polls."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PARSING = "parsing", "Parsing"
        CHUNKING = "chunking", "Chunking"
        EMBEDDING = "embedding", "Embedding"
        INDEXED = "indexed", "Indexed"
        FAILED = "failed", "Failed"

    RUNNING = (Status.PARSING, Status.CHUNKING, Status.EMBEDDING)

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    filename = models.CharField(max_length=300, blank=True)
    content_type = models.CharField(max_length=120, blank=True)
    format = models.CharField(max_length=16, blank=True)
    size_bytes = models.PositiveBigIntegerField()
    content_hash = models.CharField(max_length=64)
    data = models.BinaryField(help_text="The uploaded bytes, kept so that ingestion can be retried.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_embedded = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    indexed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(fields=("organization", "content_hash"), name="one_document_per_content"),
        ]
        indexes = [models.Index(fields=("status", "heartbeat_at"))]

    def __str__(self) -> str:
        return self.title


class Chunk(models.Model):
    """A piece of a document, with its embedding: the source of truth that indexes derive from."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    position = models.PositiveIntegerField()
    text = models.TextField()
    heading = models.CharField(
        max_length=300,
        blank=True,
        default="",
        help_text="The section headings it sits under, outermost first.",
    )
    start_char = models.PositiveIntegerField()
    end_char = models.PositiveIntegerField()
    token_count = models.PositiveSmallIntegerField()
    embedding = models.BinaryField(help_text="float32, L2-normalized.")

    class Meta:
        ordering = ("document_id", "position")
        constraints = [
            models.UniqueConstraint(fields=("document", "position"), name="one_chunk_per_position")
        ]
        indexes = [models.Index(fields=("organization", "document"))]


class KnowledgeVersion(models.Model):
    """How many times the organization's searchable chunks changed. Incremented, under this row's
    lock, in the transaction that records the change: versions commit in order, so a process
    that reads version N can read every change up to N."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    version = models.PositiveBigIntegerField(default=0)


class KnowledgeChange(models.Model):
    """One change to an organization's searchable chunks, at one version: the chunks of a document
    that became indexed, or of one that was deleted. Processes catch their indexes up from these
    rows; a process that finds one missing rebuilds from the chunks instead."""

    class Action(models.TextChoices):
        ADDED = "added", "Added"
        REMOVED = "removed", "Removed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    version = models.PositiveBigIntegerField()
    action = models.CharField(max_length=8, choices=Action.choices)
    chunk_ids = models.BinaryField(help_text="int64 little-endian chunk primary keys.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("organization", "version"), name="one_change_per_version")
        ]
