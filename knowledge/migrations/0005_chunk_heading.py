"""Chunk.heading (knowledge/lib/headings.py), filled for the existing chunks from their
document's text, which the chunks hold whole between them; then the keyword indexes of 0002 and
0004 are made again with the heading as a field of its own (knowledge/keywords.py,
HEADING_WEIGHT): on PostgreSQL each generated tsvector column is the heading at weight A joined
to the text at weight D, on SQLite each FTS5 table has a `heading` column beside `text`."""

from django.db import migrations, models

from knowledge.lib.headings import heading_path, section_headings

POSTGRESQL_FORWARD = [
    statement
    for config, column in (("simple", "search_vector"), ("english", "search_stems"))
    for statement in (
        f"DROP INDEX IF EXISTS knowledge_chunk_{column}",
        f"ALTER TABLE knowledge_chunk DROP COLUMN IF EXISTS {column}",
        f"ALTER TABLE knowledge_chunk ADD COLUMN {column} tsvector GENERATED ALWAYS AS "
        f"(setweight(to_tsvector('{config}', heading), 'A') || to_tsvector('{config}', text)) STORED",
        f"CREATE INDEX knowledge_chunk_{column} ON knowledge_chunk USING gin ({column})",
    )
]
POSTGRESQL_BACKWARD = [
    statement
    for config, column in (("simple", "search_vector"), ("english", "search_stems"))
    for statement in (
        f"DROP INDEX IF EXISTS knowledge_chunk_{column}",
        f"ALTER TABLE knowledge_chunk DROP COLUMN IF EXISTS {column}",
        f"ALTER TABLE knowledge_chunk ADD COLUMN {column} tsvector "
        f"GENERATED ALWAYS AS (to_tsvector('{config}', text)) STORED",
        f"CREATE INDEX knowledge_chunk_{column} ON knowledge_chunk USING gin ({column})",
    )
]
_SQLITE_TABLES = (
    ("knowledge_chunk_fts", "unicode61 tokenchars '_'"),
    ("knowledge_chunk_fts_stems", "porter unicode61 tokenchars '_'"),
)
SQLITE_FORWARD = [
    statement
    for table, tokenizer in _SQLITE_TABLES
    for statement in (
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE VIRTUAL TABLE {table} USING fts5("
        f'text, heading, organization_id UNINDEXED, document_id UNINDEXED, tokenize="{tokenizer}")',
        f"INSERT INTO {table} (rowid, organization_id, document_id, text, heading) "
        "SELECT id, organization_id, document_id, text, heading FROM knowledge_chunk",
    )
]
SQLITE_BACKWARD = [
    statement
    for table, tokenizer in _SQLITE_TABLES
    for statement in (
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE VIRTUAL TABLE {table} USING fts5("
        f'text, organization_id UNINDEXED, document_id UNINDEXED, tokenize="{tokenizer}")',
        f"INSERT INTO {table} (rowid, organization_id, document_id, text) "
        "SELECT id, organization_id, document_id, text FROM knowledge_chunk",
    )
]


def _run(statements: dict[str, list[str]]):
    def run(apps, schema_editor):
        for statement in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


def _fill_headings(apps, schema_editor):
    """Each chunk is `text[start_char:end_char]` of its document's parsed text and together they
    cover it (they overlap), so the text is rebuilt from them; a gap, if any, is blank."""
    Chunk = apps.get_model("knowledge", "Chunk")
    document_ids = Chunk.objects.values_list("document_id", flat=True).distinct().order_by("document_id")
    for document_id in document_ids.iterator():
        chunks = list(
            Chunk.objects.filter(document_id=document_id).only("id", "text", "start_char").order_by("start_char")
        )
        text: list[str] = []
        end = 0
        for chunk in chunks:
            if chunk.start_char > end:
                text.append("\n" * (chunk.start_char - end))
                end = chunk.start_char
            tail = chunk.text[end - chunk.start_char :]
            text.append(tail)
            end += len(tail)
        headings = section_headings("".join(text))
        if not headings:
            continue
        for chunk in chunks:
            chunk.heading = heading_path(headings, start_char=chunk.start_char)
        Chunk.objects.bulk_update(chunks, ["heading"], batch_size=500)


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0004_chunk_stem_index")]

    operations = [
        migrations.AddField(
            model_name="chunk",
            name="heading",
            field=models.CharField(
                blank=True,
                default="",
                help_text="The section headings it sits under, outermost first.",
                max_length=300,
            ),
        ),
        migrations.RunPython(_fill_headings, migrations.RunPython.noop),
        migrations.RunPython(
            _run({"postgresql": POSTGRESQL_FORWARD, "sqlite": SQLITE_FORWARD}),
            _run({"postgresql": POSTGRESQL_BACKWARD, "sqlite": SQLITE_BACKWARD}),
        ),
    ]
