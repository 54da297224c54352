"""The keyword index beside the vector index: full-text search in the database itself.

PostgreSQL: a generated `tsvector` column on knowledge_chunk (`to_tsvector('simple', text)`)
with a GIN index, ranked BM25-like: each word's `ts_rank_cd` weighted by its rarity. SQLite (the embedded default): an FTS5 table
(knowledge_chunk_fts, rowid = chunk id), ranked by BM25, which the services that write and
delete chunks keep in step. Both are created by migration 0002; migration 0004 adds the same
again by English stem (`to_tsvector('english', text)`, FTS5's porter tokenizer), see STEM_WEIGHT;
migration 0005 adds each passage's section headings as a weighted field, see HEADING_WEIGHT. The
database is the truth here as well, so every process on every machine sees the same keyword
index with nothing to sync.

The 'simple' configuration neither stems nor drops words, so identifiers and error codes stay
whole: PostgreSQL parses `model_not_found` into the phrase model <-> not <-> found (and the query
is parsed the same way, so it matches that phrase only), `E1234` and `os.path.join` into one
token each; FTS5 keeps underscores inside tokens (`tokenchars '_'`). Questions are matched by
any of their words (OR), with common English words left out: they would match every passage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection

FTS_TABLE = "knowledge_chunk_fts"
# Each question word is also matched by its English stem (migration 0004: PostgreSQL's 'english'
# configuration, FTS5's porter stemmer), and a passage's keyword score is its whole-word score
# plus STEM_WEIGHT times its stem score: "decorators" then finds a passage about a "decorator" and
# "raising" one that "raises", while a passage with the exact word (an identifier, an error code)
# also scores on the whole-word index and stays above its relatives. A paraphrasing question
# rarely uses the answer's own word forms, so the stems carry most of the weight; on the Python
# reference question set (BENCHMARKS.md; 0.5, 1 and 2 tried) this raised hybrid recall@5 and
# MRR@10 on both databases.
STEM_WEIGHT = 2.0
FTS_STEMS_TABLE = "knowledge_chunk_fts_stems"
# A passage's section headings (Chunk.heading, migration 0005) are a field of their own, each word
# found there weighing HEADING_WEIGHT times one found in the text: a question that names what a
# section is about ("identity comparisons", "string literal concatenation") then finds the
# section's passages, most of which never repeat its name. PostgreSQL stores the heading at
# weight A and the text at D and gives ts_rank_cd the weights; FTS5's bm25() takes one per
# column. Chosen on the even half of the Python reference question set and checked on the odd
# half (BENCHMARKS.md): 1, 2, 4 and 8 tried.
HEADING_WEIGHT = 8.0
# ts_rank_cd's weights for D, C, B, A: D, the text, keeps its default (0.1), which _ONE_OCCURRENCE
# assumes; it refuses a weight above 1, so HEADING_WEIGHT is at most 10 here.
_POSTGRESQL_RANK_WEIGHTS = [0.1, 0.2, 0.4, 0.1 * HEADING_WEIGHT]
_SQLITE_TABLES = (FTS_TABLE, FTS_STEMS_TABLE)
# (text search configuration, generated column) pairs on PostgreSQL.
_POSTGRESQL_INDEXES = (("simple", "search_vector"), ("english", "search_stems"))

# Words a question is made of that say nothing about which passage answers it.
_STOPWORDS = """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing done down during each either else
    every few for from further get gets got had has have having he her here hers him his how i
    if in into is it its itself just let me might more most much must my no nor not of off on
    once only or other our ours out over own per same shall she should so some such than that
    the their theirs them then there these they this those through to too under until up upon
    us use used uses using very via was we were what when where whether which while who whom
    whose why will with within without would yes yet you your yours"""
STOPWORDS = frozenset(_STOPWORDS.split())

MAX_QUERY_WORDS = 32

# Punctuation around a word ("model_not_found?", "(E1234)") is not part of it.
_EDGE = re.compile(r"^[^\w]+|[^\w]+$")


@dataclass(frozen=True)
class KeywordHit:
    id: int
    score: float


def query_words(query: str) -> list[str]:
    """The distinct words of a question that are worth matching, in order, at most
    MAX_QUERY_WORDS (a rag/ prompt can be long)."""
    words: list[str] = []
    seen: set[str] = set()
    for raw in query.split():
        word = _EDGE.sub("", raw.replace('"', ""))
        lowered = word.lower()
        if not word or lowered in STOPWORDS or lowered in seen or not re.search(r"\w", word):
            continue
        seen.add(lowered)
        words.append(word)
        if len(words) == MAX_QUERY_WORDS:
            break
    return words


def keyword_search(
    *, organization_id: int, query: str, k: int, document_ids: Sequence[int] | None = None
) -> list[KeywordHit]:
    """The organization's chunks that contain any word of the query, best first. The ids are
    candidates: the caller checks them against the database as it does vector hits."""
    words = query_words(query)
    if not words or k <= 0:
        return []
    if connection.vendor == "postgresql":
        rankings = _postgresql_search(organization_id, words, k, document_ids)
    elif connection.vendor == "sqlite":
        rankings = [
            _sqlite_search(organization_id, words, k, document_ids, table=table) for table in _SQLITE_TABLES
        ]
    else:
        raise NotImplementedError(f"No keyword index on {connection.vendor}")
    # A passage's score is its score as matched whole plus STEM_WEIGHT times its score by stem.
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, (1.0, STEM_WEIGHT), strict=False):
        for hit in ranking:
            scores[hit.id] = scores.get(hit.id, 0.0) + weight * hit.score
    best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [KeywordHit(id=hit_id, score=score) for hit_id, score in best]


# The rank ts_rank_cd (normalized by log length) gives one occurrence of a word in a passage of
# usual length (~200 words): the term-frequency saturation point, as BM25's k1 = 1 would put it.
_ONE_OCCURRENCE = 0.016
# A word in this many of the organization's passages is common: it adds to the score of the
# passages that match the question's rarer words but does not make a passage a candidate itself.
# Ranking every passage that holds a common word is what costs: at 100,000 chunks of the Python
# reference, keyword search took 326 ms p50 when every match was ranked, 9.6 ms with this limit.
COMMON_WORD_PASSAGES = 200

# Each word's frequency among the organization's passages in each index, counted up to the limit
# (the GIN index finds them; the limit bounds the rows read).
_POSTGRESQL_FREQUENCY_PART = """
    (SELECT count(*) FROM (
        SELECT 1 FROM knowledge_chunk AS chunk
        WHERE chunk.organization_id = %(organization_id)s {scope}
          AND chunk.{column} @@ websearch_to_tsquery('{config}', '"' || word || '"')
        LIMIT %(limit)s
    ) AS found)
"""
_POSTGRESQL_FREQUENCY = """
SELECT {parts}
FROM unnest(%(words)s::text[]) WITH ORDINALITY AS words(word, position)
ORDER BY position
"""

# The passages that hold any rare word (or, when every word is common, all of them), each
# scored by the sum over the question's words it holds of rarity times saturated frequency.
_POSTGRESQL_RANK = """
(WITH words AS (
    SELECT websearch_to_tsquery('{config}', '"' || word || '"') AS query, weight
    FROM unnest(%(words{n})s::text[], %(weights{n})s::float8[]) AS words(word, weight)
),
candidates AS (
    SELECT chunk.id, chunk.{column} AS search_vector FROM knowledge_chunk AS chunk
    WHERE chunk.organization_id = %(organization_id)s {scope}
      AND chunk.{column} @@ websearch_to_tsquery('{config}', %(candidate_query{n})s)
    LIMIT %(limit{n})s
)
SELECT {n} AS ranking, candidates.id,
       sum(words.weight * rank.value / (rank.value + %(one)s)) AS score
FROM candidates
JOIN words ON candidates.search_vector @@ words.query
CROSS JOIN LATERAL (
    SELECT ts_rank_cd(%(rank_weights)s::float4[], candidates.search_vector, words.query, 1) AS value
) AS rank
GROUP BY candidates.id
ORDER BY score DESC, candidates.id
LIMIT %(k)s)
"""


def _postgresql_search(
    organization_id: int, words: list[str], k: int, document_ids: Sequence[int] | None
) -> list[list[KeywordHit]]:
    """One ranking per index of _POSTGRESQL_INDEXES, in two round trips for all of them."""
    # websearch_to_tsquery parses a quoted word as the column was parsed (a phrase when the
    # parser splits it, as model_not_found) and never fails on user input; "or" is OR.
    scope = "" if document_ids is None else "AND chunk.document_id = ANY(%(document_ids)s)"
    lowered = [word.lower() for word in words]
    params: dict[str, Any] = {
        "words": lowered,
        "organization_id": organization_id,
        "document_ids": list(document_ids or []),
        "limit": COMMON_WORD_PASSAGES,
        "one": _ONE_OCCURRENCE,
        "rank_weights": _POSTGRESQL_RANK_WEIGHTS,
        "k": k,
    }
    parts = ", ".join(
        _POSTGRESQL_FREQUENCY_PART.format(scope=scope, config=config, column=column)
        for config, column in _POSTGRESQL_INDEXES
    )
    with connection.cursor() as cursor:
        cursor.execute(_POSTGRESQL_FREQUENCY.format(parts=parts), params)
        frequencies = cursor.fetchall()
        cursor.execute(
            "SELECT greatest(coalesce(sum(chunks_total), 0), 1) FROM knowledge_document "
            "WHERE organization_id = %s",
            [organization_id],
        )
        total = cursor.fetchone()[0]
        queries = []
        for n, (config, column) in enumerate(_POSTGRESQL_INDEXES):
            present = [(word, row[n]) for word, row in zip(lowered, frequencies, strict=True) if row[n]]
            if not present:
                continue
            rare = [word for word, df in present if df < COMMON_WORD_PASSAGES]
            # With only common words, a candidate must hold them all.
            joiner, chosen = (" or ", rare) if rare else (" ", [word for word, _ in present])
            params.update(
                {
                    f"words{n}": [word for word, _ in present],
                    # BM25's inverse document frequency.
                    f"weights{n}": [math.log(1 + (total - df + 0.5) / (df + 0.5)) for _, df in present],
                    f"candidate_query{n}": joiner.join(f'"{word}"' for word in chosen),
                    f"limit{n}": COMMON_WORD_PASSAGES * max(1, len(rare)),
                }
            )
            queries.append(_POSTGRESQL_RANK.format(scope=scope, config=config, column=column, n=n))
        if not queries:
            return []
        cursor.execute(" UNION ALL ".join(queries), params)
        rankings: list[list[KeywordHit]] = [[] for _ in _POSTGRESQL_INDEXES]
        for ranking, hit_id, score in cursor.fetchall():
            rankings[ranking].append(KeywordHit(id=hit_id, score=float(score)))
        return rankings


def _sqlite_search(
    organization_id: int, words: list[str], k: int, document_ids: Sequence[int] | None, *, table: str
) -> list[KeywordHit]:
    # Each word quoted: FTS5 reads it as a string (a phrase if it tokenizes into several),
    # never as query syntax.
    match = " OR ".join('"' + word.replace('"', '""') + '"' for word in words)
    params: list[Any] = [match, organization_id]
    scope = ""
    if document_ids is not None:
        if not document_ids:
            return []
        scope = f"AND document_id IN ({', '.join('%s' for _ in document_ids)})"
        params.extend(document_ids)
    params.append(k)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT rowid, bm25({table}, 1.0, {HEADING_WEIGHT}) AS rank FROM {table}
            WHERE {table} MATCH %s AND organization_id = %s {scope}
            ORDER BY rank, rowid
            LIMIT %s
            """,
            params,
        )
        # bm25() is lower for better matches.
        return [KeywordHit(id=row[0], score=-float(row[1])) for row in cursor.fetchall()]


def keyword_index_add(*, rows: Iterable[tuple[int, int, int, str, str]]) -> None:
    """Indexes chunks given as (chunk id, organization id, document id, text, heading). On
    PostgreSQL the generated columns already have; only SQLite's FTS5 tables are written."""
    if connection.vendor != "sqlite":
        return
    rows = list(rows)
    with connection.cursor() as cursor:
        for table in _SQLITE_TABLES:
            cursor.executemany(
                f"INSERT INTO {table} (rowid, organization_id, document_id, text, heading) "
                "VALUES (%s, %s, %s, %s, %s)",
                rows,
            )


def keyword_index_remove(*, chunk_ids: Sequence[int]) -> None:
    """Removes chunks from SQLite's FTS5 table (PostgreSQL's column goes with its row)."""
    if connection.vendor != "sqlite" or not chunk_ids:
        return
    batch = 500  # within SQLite's limit on bound parameters
    with connection.cursor() as cursor:
        for start in range(0, len(chunk_ids), batch):
            part = list(chunk_ids[start : start + batch])
            for table in _SQLITE_TABLES:
                cursor.execute(f"DELETE FROM {table} WHERE rowid IN ({', '.join('%s' for _ in part)})", part)
