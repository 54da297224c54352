"""The keyword index by English stem beside 0002's whole-word one (knowledge/keywords.py): on
PostgreSQL a second generated tsvector column (`to_tsvector('english', text)`) with a GIN index,
on SQLite a second FTS5 table (the porter stemmer around unicode61, underscores still inside
tokens) filled from the existing chunks."""

from django.db import migrations

POSTGRESQL_FORWARD = [
    "ALTER TABLE knowledge_chunk ADD COLUMN search_stems tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
    "CREATE INDEX knowledge_chunk_search_stems ON knowledge_chunk USING gin (search_stems)",
]
POSTGRESQL_BACKWARD = [
    "DROP INDEX IF EXISTS knowledge_chunk_search_stems",
    "ALTER TABLE knowledge_chunk DROP COLUMN IF EXISTS search_stems",
]
SQLITE_FORWARD = [
    "CREATE VIRTUAL TABLE knowledge_chunk_fts_stems USING fts5("
    "text, organization_id UNINDEXED, document_id UNINDEXED, tokenize=\"porter unicode61 tokenchars '_'\")",
    "INSERT INTO knowledge_chunk_fts_stems (rowid, organization_id, document_id, text) "
    "SELECT id, organization_id, document_id, text FROM knowledge_chunk",
]
SQLITE_BACKWARD = ["DROP TABLE IF EXISTS knowledge_chunk_fts_stems"]


def _run(statements: dict[str, list[str]]):
    def run(apps, schema_editor):
        for statement in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0003_index_versions")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRESQL_FORWARD, "sqlite": SQLITE_FORWARD}),
            _run({"postgresql": POSTGRESQL_BACKWARD, "sqlite": SQLITE_BACKWARD}),
        )
    ]
