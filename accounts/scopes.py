from __future__ import annotations

GENERATE = "generate"
RAG = "rag"
DOCUMENTS_READ = "documents:read"
DOCUMENTS_WRITE = "documents:write"
USAGE_READ = "usage:read"

ALL_SCOPES: tuple[str, ...] = (GENERATE, RAG, DOCUMENTS_READ, DOCUMENTS_WRITE, USAGE_READ)
