"""The Django-free core of per-organization retrieval: nothing here imports Django.

* `parsing`: uploaded bytes to plain text (`extract_text`), with refusals as exceptions;
* `chunking`: text to chunks sized in the embedding model's own tokens (`chunk_text`);
* `index`: per-organization FAISS indexes on disk, shared across processes (`IndexStore`).

The modules are imported one by one (`from knowledge.lib.index import IndexStore`) so that a
process needing one of them does not pay for the others' heavy dependencies.
"""
