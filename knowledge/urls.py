from __future__ import annotations

from django.urls import path

from knowledge import apis

urlpatterns = [
    path("documents/", apis.DocumentListCreateApi.as_view(), name="documents"),
    path("documents/<int:document_id>/", apis.DocumentDetailApi.as_view(), name="document-detail"),
    path("documents/<int:document_id>/retry/", apis.DocumentRetryApi.as_view(), name="document-retry"),
    path("search/", apis.SearchApi.as_view(), name="search"),
    path("rag/", apis.RagApi.as_view(), name="rag"),
]
