"""The keyword index (knowledge/keywords.py): on PostgreSQL a generated tsvector column with a GIN
index, on SQLite an FTS5 table filled from the existing chunks. Neither is a model field: no
model reads them, and each exists on one database only."""

from django.db import migrations

POSTGRESQL_FORWARD = [
    "ALTER TABLE knowledge_chunk ADD COLUMN search_vector tsvector "
    "GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED",
    "CREATE INDEX knowledge_chunk_search_vector ON knowledge_chunk USING gin (search_vector)",
]
POSTGRESQL_BACKWARD = [
    "DROP INDEX IF EXISTS knowledge_chunk_search_vector",
    "ALTER TABLE knowledge_chunk DROP COLUMN IF EXISTS search_vector",
]
SQLITE_FORWARD = [
    # rowid is the chunk id; the ids are UNINDEXED columns that scope a search.
    "CREATE VIRTUAL TABLE knowledge_chunk_fts USING fts5("
    "text, organization_id UNINDEXED, document_id UNINDEXED, tokenize=\"unicode61 tokenchars '_'\")",
    "INSERT INTO knowledge_chunk_fts (rowid, organization_id, document_id, text) "
    "SELECT id, organization_id, document_id, text FROM knowledge_chunk",
]
SQLITE_BACKWARD = ["DROP TABLE IF EXISTS knowledge_chunk_fts"]


def _run(statements: dict[str, list[str]]):
    def run(apps, schema_editor):
        for statement in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0001_initial")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRESQL_FORWARD, "sqlite": SQLITE_FORWARD}),
            _run({"postgresql": POSTGRESQL_BACKWARD, "sqlite": SQLITE_BACKWARD}),
        )
    ]
