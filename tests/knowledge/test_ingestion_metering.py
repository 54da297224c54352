"""Ingestion is metered as embeddings are: the tokens it embeds, on the organization's budget,
admitted before any is embedded."""

from __future__ import annotations

import pytest
from django.db.models import Sum

from knowledge.models import Chunk, Document
from tests.conftest import Tenant
from usage.models import UsageRecord
from usage.services import budget_views, get_ledger, usage_stream_flush

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks")]

TEXT = (
    "Classes provide a means of bundling data and functionality together. Creating a new class creates a new "
    "type of object, allowing new instances of that type to be made. "
) * 20


def _upload(tenant: Tenant, capture, *, status: int = 202) -> int:
    with capture(execute=True):
        response = tenant.client().post(
            "/api/v1/documents/", {"title": "Classes", "text": TEXT}, format="json"
        )
    assert response.status_code == status, response.content
    return int(response.json()["id"])


def test_an_ingested_document_is_charged_the_tokens_it_embedded(
    alice: Tenant, django_capture_on_commit_callbacks
) -> None:
    alice.organization.token_quota = 100_000
    alice.organization.save()
    document = Document.objects.get(pk=_upload(alice, django_capture_on_commit_callbacks))
    assert document.status == Document.Status.INDEXED
    embedded = Chunk.objects.filter(document=document).aggregate(total=Sum("token_count"))["total"]
    usage_stream_flush()
    (record,) = UsageRecord.objects.filter(endpoint="ingestion")
    assert (record.prompt_tokens, record.completion_tokens, record.model) == (embedded, 0, "all-MiniLM-L6-v2")
    (budget,) = budget_views(context=alice.context())
    assert (budget.used, budget.reserved) == (embedded, 0)
    # The same content again is indexed once, and charged once.
    _upload(alice, django_capture_on_commit_callbacks, status=200)
    usage_stream_flush()
    assert UsageRecord.objects.filter(endpoint="ingestion").count() == 1


def test_a_document_the_budget_cannot_take_fails_before_anything_is_embedded(
    alice: Tenant, django_capture_on_commit_callbacks
) -> None:
    alice.organization.token_quota = 50
    alice.organization.save()
    document = Document.objects.get(pk=_upload(alice, django_capture_on_commit_callbacks))
    assert document.status == Document.Status.FAILED
    assert "token quota" in document.error
    assert not Chunk.objects.filter(document=document).exists()
    assert get_ledger().active_reservations() == 0
    (budget,) = budget_views(context=alice.context())
    assert (budget.used, budget.reserved) == (0, 0)


def test_ingestion_has_its_own_quota_beside_the_organizations(
    alice: Tenant, django_capture_on_commit_callbacks
) -> None:
    alice.organization.token_quota = None
    alice.organization.ingestion_token_quota = 50
    alice.organization.save()
    document = Document.objects.get(pk=_upload(alice, django_capture_on_commit_callbacks))
    assert document.status == Document.Status.FAILED
    assert "ingestion token quota" in document.error
    # Generation does not count against it.
    (ingestion,) = [b for b in budget_views(context=alice.context()) if b.scope == "ingestion"]
    assert (ingestion.limit, ingestion.used, ingestion.reserved) == (50, 0, 0)
