from __future__ import annotations

from celery import shared_task

from knowledge import services


@shared_task(name="knowledge.ingest_document", ignore_result=True, acks_late=True)
def ingest_document(document_id: int) -> None:
    services.document_ingest(document_id=document_id)


@shared_task(name="knowledge.recover_stale", ignore_result=True)
def recover_stale() -> int:
    return services.documents_recover_stale()
