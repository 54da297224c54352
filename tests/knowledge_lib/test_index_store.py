from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from knowledge.lib import index as index_module
from knowledge.lib.index import IndexCorrupt, IndexMissing, IndexStore

REPO_ROOT = Path(__file__).resolve().parents[2]
DIM = 16
ORG = "org-1"
# Small enough that the HNSW variants build in milliseconds.
THRESHOLD = 100


def unit_vectors(count: int, *, seed: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(
    vectors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    query: npt.NDArray[np.float32],
    k: int,
) -> list[int]:
    scores = vectors @ (query / np.linalg.norm(query))
    return [int(ids[i]) for i in np.argsort(-scores)[:k]]


@pytest.fixture(params=["exact", "approximate"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(tmp_path: Path) -> IndexStore:
    return IndexStore(tmp_path, approximate_threshold=THRESHOLD)


def filled(
    store: IndexStore, *, kind: str, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    count = 60 if kind == "exact" else 400
    ids = np.arange(1_000, 1_000 + count, dtype=np.int64)
    vectors = unit_vectors(count, seed=seed)
    store.add(org_key=ORG, ids=ids, vectors=vectors)
    assert store.info(org_key=ORG).kind == kind
    return ids, vectors


def run_worker(code: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, str(REPO_ROOT), *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


WORKER_PRELUDE = """
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from knowledge.lib.index import IndexStore
"""


def test_search_returns_nearest_ids_best_first(store: IndexStore, kind: str) -> None:
    ids, vectors = filled(store, kind=kind)
    query = vectors[7] + 0.1 * unit_vectors(1, seed=99)[0]

    hits = store.search(org_key=ORG, query_vector=query, k=5)

    assert [hit.id for hit in hits] == brute_force(vectors, ids, query, 5)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_scores_are_cosine_similarities_whatever_the_vector_lengths(store: IndexStore) -> None:
    store.add(org_key=ORG, ids=[1, 2], vectors=[[3.0, 0.0], [1.0, 1.0]])

    hits = store.search(org_key=ORG, query_vector=[10.0, 0.0], k=2)

    assert [hit.id for hit in hits] == [1, 2]
    assert hits[0].score == pytest.approx(1.0)
    assert hits[1].score == pytest.approx(np.sqrt(0.5))


def test_removed_ids_are_never_returned(store: IndexStore, kind: str) -> None:
    ids, vectors = filled(store, kind=kind)
    removed = ids[::7]

    assert store.remove(org_key=ORG, ids=removed) == len(removed)

    for position in range(0, len(ids), 7):
        hits = store.search(org_key=ORG, query_vector=vectors[position], k=len(ids))
        assert not {hit.id for hit in hits} & set(removed.tolist())
    assert store.count(org_key=ORG) == len(ids) - len(removed)


def test_approximate_removal_below_compaction_keeps_tombstones(store: IndexStore) -> None:
    ids, _ = filled(store, kind="approximate")

    store.remove(org_key=ORG, ids=ids[:10])

    info = store.info(org_key=ORG)
    assert (info.kind, info.count, info.tombstones) == ("approximate", len(ids) - 10, 10)


def test_removing_past_the_compaction_ratio_rebuilds_without_tombstones(
    store: IndexStore,
) -> None:
    ids, vectors = filled(store, kind="approximate")

    store.remove(org_key=ORG, ids=ids[:150])

    info = store.info(org_key=ORG)
    assert (info.kind, info.count, info.tombstones) == ("approximate", 250, 0)
    hits = store.search(org_key=ORG, query_vector=vectors[0], k=400)
    assert len(hits) == 250
    assert min(hit.id for hit in hits) == ids[150]


def test_shrinking_below_the_threshold_returns_to_the_exact_index(store: IndexStore) -> None:
    ids, _ = filled(store, kind="approximate")

    store.remove(org_key=ORG, ids=ids[:350])

    assert store.info(org_key=ORG).kind == "exact"
    assert store.count(org_key=ORG) == 50


def test_index_becomes_approximate_once_it_passes_the_threshold(store: IndexStore) -> None:
    store.add(org_key=ORG, ids=np.arange(THRESHOLD), vectors=unit_vectors(THRESHOLD, seed=1))
    assert store.info(org_key=ORG).kind == "exact"

    store.add(org_key=ORG, ids=[THRESHOLD], vectors=unit_vectors(1, seed=2))

    assert store.info(org_key=ORG).kind == "approximate"
    assert store.count(org_key=ORG) == THRESHOLD + 1


def test_readding_a_removed_id_makes_it_searchable_again(store: IndexStore, kind: str) -> None:
    ids, vectors = filled(store, kind=kind)
    store.remove(org_key=ORG, ids=ids[:3])

    store.add(org_key=ORG, ids=ids[:1], vectors=vectors[:1])

    assert store.search(org_key=ORG, query_vector=vectors[0], k=1)[0].id == ids[0]
    assert store.count(org_key=ORG) == len(ids) - 2
    hits = store.search(org_key=ORG, query_vector=vectors[0], k=len(ids), allowed_ids=set(ids[:3]))
    assert [hit.id for hit in hits] == [ids[0]]


def test_replacing_a_vector_in_the_graph_costs_one_tombstone_not_a_rebuild(
    store: IndexStore,
) -> None:
    ids, _ = filled(store, kind="approximate")

    store.add(org_key=ORG, ids=ids[:2], vectors=unit_vectors(2, seed=4321))

    info = store.info(org_key=ORG)
    assert (info.kind, info.count, info.tombstones) == ("approximate", len(ids), 2)


def test_adding_an_existing_id_replaces_its_vector(store: IndexStore, kind: str) -> None:
    ids, vectors = filled(store, kind=kind)
    replacement = unit_vectors(1, seed=1234)

    store.add(org_key=ORG, ids=ids[:1], vectors=replacement)

    assert store.count(org_key=ORG) == len(ids)
    hits = store.search(org_key=ORG, query_vector=replacement[0], k=len(ids))
    assert hits[0].id == ids[0] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [hit.id for hit in hits].count(int(ids[0])) == 1


def test_approximate_search_recall_against_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    centres = unit_vectors(60, seed=6, dim=32)
    owners = rng.integers(0, 60, size=3_000)
    vectors = centres[owners] + 0.15 * rng.standard_normal((3_000, 32)).astype(np.float32)
    ids = np.arange(3_000, dtype=np.int64)
    store = IndexStore(tmp_path, approximate_threshold=1_000)
    store.rebuild(org_key=ORG, ids=ids, vectors=vectors)
    assert store.info(org_key=ORG).kind == "approximate"
    normalized = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    found = 0
    for query in vectors[:100] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32):
        exact = set(brute_force(normalized, ids, query, 10))
        found += len(exact & {hit.id for hit in store.search(org_key=ORG, query_vector=query, k=10)})

    assert found / 1_000 >= 0.95


def test_allowed_ids_restrict_results_to_exactly_those_ids(store: IndexStore, kind: str) -> None:
    ids, vectors = filled(store, kind=kind)
    allowed = set(ids[::9].tolist())
    allowed_array = np.array(sorted(allowed))
    query = vectors[1]

    hits = store.search(org_key=ORG, query_vector=query, k=5, allowed_ids=allowed)

    assert [hit.id for hit in hits] == brute_force(
        vectors[np.isin(ids, allowed_array)], allowed_array, query, 5
    )


def test_allowed_ids_never_bring_back_removed_or_unknown_ids(store: IndexStore, kind: str) -> None:
    ids, vectors = filled(store, kind=kind)
    store.remove(org_key=ORG, ids=ids[:2])
    live = ids[2:5]

    hits = store.search(
        org_key=ORG,
        query_vector=vectors[0],
        k=2,
        allowed_ids={*ids[:5].tolist(), -5, 10**12},
    )

    # The removed ids would be the best matches; the k slots go to live ids instead.
    assert [hit.id for hit in hits] == brute_force(vectors[2:5], live, vectors[0], 2)


def test_empty_allowed_ids_find_nothing(store: IndexStore) -> None:
    _, vectors = filled(store, kind="exact")

    assert store.search(org_key=ORG, query_vector=vectors[0], k=3, allowed_ids=set()) == []


def test_k_larger_than_the_index_returns_every_vector(store: IndexStore, kind: str) -> None:
    ids, vectors = filled(store, kind=kind)

    hits = store.search(org_key=ORG, query_vector=vectors[0], k=10_000)

    assert sorted(hit.id for hit in hits) == ids.tolist()


def test_missing_index_is_reported_as_missing(store: IndexStore) -> None:
    with pytest.raises(IndexMissing):
        store.search(org_key=ORG, query_vector=np.ones(DIM), k=1)
    with pytest.raises(IndexMissing):
        store.count(org_key=ORG)
    with pytest.raises(IndexMissing):
        store.remove(org_key=ORG, ids=[1])


def test_rebuild_replaces_the_whole_content(store: IndexStore, kind: str) -> None:
    filled(store, kind=kind)
    new_vectors = unit_vectors(5, seed=77)

    store.rebuild(org_key=ORG, ids=[1, 2, 3, 4, 5], vectors=new_vectors)

    assert store.count(org_key=ORG) == 5
    assert store.search(org_key=ORG, query_vector=new_vectors[2], k=1)[0].id == 3


def test_drop_deletes_the_index(store: IndexStore) -> None:
    filled(store, kind="exact")

    store.drop(org_key=ORG)

    with pytest.raises(IndexMissing):
        store.count(org_key=ORG)
    store.drop(org_key=ORG)


def test_organizations_are_separate(store: IndexStore) -> None:
    store.add(org_key="alice", ids=[1], vectors=unit_vectors(1, seed=1))
    store.add(org_key="bob", ids=[2], vectors=unit_vectors(1, seed=2))

    assert [hit.id for hit in store.search(org_key="alice", query_vector=np.ones(DIM), k=5)] == [1]
    assert [hit.id for hit in store.search(org_key="bob", query_vector=np.ones(DIM), k=5)] == [2]


@pytest.mark.parametrize("org_key", ["../etc", "a/b", "", "x" * 65, "dot.dot"])
def test_organization_keys_that_are_not_plain_names_are_refused(store: IndexStore, org_key: str) -> None:
    with pytest.raises(ValueError, match="organization key"):
        store.add(org_key=org_key, ids=[1], vectors=unit_vectors(1, seed=1))


def test_invalid_input_is_refused(store: IndexStore) -> None:
    store.add(org_key=ORG, ids=[1], vectors=unit_vectors(1, seed=1))

    with pytest.raises(ValueError, match="dimension"):
        store.add(org_key=ORG, ids=[2], vectors=unit_vectors(1, seed=1, dim=DIM + 1))
    with pytest.raises(ValueError, match="zero vector"):
        store.add(org_key=ORG, ids=[2], vectors=np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="NaN"):
        store.search(org_key=ORG, query_vector=np.full(DIM, np.nan), k=1)
    with pytest.raises(ValueError, match="unique"):
        store.add(org_key=ORG, ids=[3, 3], vectors=unit_vectors(2, seed=1))
    with pytest.raises(ValueError, match="2 ids but 1 vectors"):
        store.add(org_key=ORG, ids=[3, 4], vectors=unit_vectors(1, seed=1))


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "garbage", "header"])
def test_damaged_file_is_reported_as_corrupt(store: IndexStore, tmp_path: Path, damage: str) -> None:
    filled(store, kind="exact")
    path = tmp_path / f"{ORG}.faiss"
    data = bytearray(path.read_bytes())
    if damage == "flip-byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        del data[len(data) - 100 :]
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data[12:20] = b"{{{{{{{{"
    path.write_bytes(bytes(data))

    with pytest.raises(IndexCorrupt):
        IndexStore(tmp_path).search(org_key=ORG, query_vector=np.ones(DIM), k=1)
    with pytest.raises(IndexCorrupt):
        store.add(org_key=ORG, ids=[1], vectors=unit_vectors(1, seed=1))


def test_corrupt_index_can_be_rebuilt(store: IndexStore, tmp_path: Path) -> None:
    filled(store, kind="exact")
    (tmp_path / f"{ORG}.faiss").write_bytes(b"not an index")

    store.rebuild(org_key=ORG, ids=[7], vectors=unit_vectors(1, seed=1))

    assert store.count(org_key=ORG) == 1


def test_leftover_temp_file_from_a_crash_is_ignored_then_cleaned(store: IndexStore, tmp_path: Path) -> None:
    ids, _ = filled(store, kind="exact")
    orphan = tmp_path / f".{ORG}.k3j9x_2a.tmp"
    orphan.write_bytes(b"half a write")

    assert IndexStore(tmp_path).count(org_key=ORG) == len(ids)
    store.add(org_key=ORG, ids=[1], vectors=unit_vectors(1, seed=1))
    assert not orphan.exists()


def test_failed_replace_keeps_the_previous_index_and_no_temp_file(
    store: IndexStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, _ = filled(store, kind="exact")

    def failing_replace(source: str, destination: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(index_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.add(org_key=ORG, ids=[1], vectors=unit_vectors(1, seed=1))

    assert IndexStore(tmp_path).count(org_key=ORG) == len(ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{ORG}.faiss", f"{ORG}.lock"]


def test_process_killed_mid_write_leaves_the_previous_index_readable(
    store: IndexStore, tmp_path: Path
) -> None:
    ids, _ = filled(store, kind="exact")
    crash = (
        WORKER_PRELUDE
        + """
import os
from knowledge.lib import index
def die(fd):
    os._exit(3)  # the kernel keeps the half-written temp file; no cleanup runs
index.os.fsync = die
store = IndexStore(Path(sys.argv[2]))
store.add(org_key=sys.argv[3], ids=[1], vectors=np.ones((1, int(sys.argv[4]))))
"""
    )

    result = subprocess.run(
        [sys.executable, "-c", crash, str(REPO_ROOT), str(tmp_path), ORG, str(DIM)],
        capture_output=True,
        timeout=120,
    )

    assert result.returncode == 3
    assert list(tmp_path.glob(f".{ORG}.*.tmp"))
    assert IndexStore(tmp_path).count(org_key=ORG) == len(ids)


def test_another_process_sees_new_and_removed_vectors_without_restart(
    store: IndexStore, tmp_path: Path, kind: str
) -> None:
    ids, vectors = filled(store, kind=kind)
    assert store.count(org_key=ORG) == len(ids)  # loaded and cached in this process
    writer = (
        WORKER_PRELUDE
        + """
store = IndexStore(Path(sys.argv[2]), approximate_threshold=int(sys.argv[4]))
org = sys.argv[3]
store.add(org_key=org, ids=[1], vectors=np.ones((1, int(sys.argv[5]))))
store.remove(org_key=org, ids=[int(sys.argv[6])])
"""
    )

    run_worker(writer, tmp_path, ORG, THRESHOLD, DIM, ids[0])

    assert store.search(org_key=ORG, query_vector=np.ones(DIM), k=1)[0].id == 1
    hits = store.search(org_key=ORG, query_vector=vectors[0], k=len(ids) + 1)
    assert int(ids[0]) not in {hit.id for hit in hits}
    assert store.count(org_key=ORG) == len(ids)


def test_reader_reloads_a_same_size_rewrite_within_one_clock_tick(tmp_path: Path) -> None:
    writer = IndexStore(tmp_path)
    reader = IndexStore(tmp_path)
    path = tmp_path / f"{ORG}.faiss"
    writer.add(org_key=ORG, ids=[1, 2], vectors=unit_vectors(2, seed=1))
    assert reader.count(org_key=ORG) == 2
    first = os.stat(path)
    newest = unit_vectors(1, seed=3)

    # Two rewrites of identical size. ext4 hands a freed inode straight to the next file, and
    # utime puts the last write in the same clock tick as the one the reader has cached.
    writer.add(org_key=ORG, ids=[1], vectors=unit_vectors(1, seed=2))
    writer.add(org_key=ORG, ids=[1], vectors=newest)
    os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert os.stat(path).st_size == first.st_size

    hit = reader.search(org_key=ORG, query_vector=newest[0], k=1)[0]
    assert (hit.id, round(hit.score, 5)) == (1, 1.0)


def test_two_processes_adding_at_once_lose_nothing(tmp_path: Path, kind: str) -> None:
    threshold = 10_000 if kind == "exact" else 50
    adder = (
        WORKER_PRELUDE
        + """
import time
root, org, first = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
store = IndexStore(root, approximate_threshold=int(sys.argv[5]))
rng = np.random.default_rng(first)
while not (root / "go").exists():
    time.sleep(0.001)
for batch in range(20):
    start = first + batch * 5
    store.add(org_key=org, ids=np.arange(start, start + 5), vectors=rng.standard_normal((5, 16)))
"""
    )
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                adder,
                str(REPO_ROOT),
                str(tmp_path),
                ORG,
                str(first),
                str(threshold),
            ]
        )
        for first in (0, 1_000)
    ]
    (tmp_path / "go").touch()
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]

    store = IndexStore(tmp_path, approximate_threshold=threshold)
    expected = set(range(100)) | set(range(1_000, 1_100))
    assert store.count(org_key=ORG) == 200
    assert store.info(org_key=ORG).kind == kind
    hits = store.search(org_key=ORG, query_vector=np.ones(DIM), k=500, allowed_ids=expected)
    assert {hit.id for hit in hits} == expected


def test_threads_adding_and_searching_at_once_lose_nothing(tmp_path: Path) -> None:
    store = IndexStore(tmp_path, approximate_threshold=THRESHOLD)
    store.add(org_key=ORG, ids=[0], vectors=unit_vectors(1, seed=0))
    errors: list[BaseException] = []

    def add_batches(first: int) -> None:
        try:
            for batch in range(10):
                start = first + batch * 4
                store.add(
                    org_key=ORG,
                    ids=np.arange(start, start + 4),
                    vectors=unit_vectors(4, seed=start),
                )
                store.search(org_key=ORG, query_vector=np.ones(DIM), k=3)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=add_batches, args=(first,)) for first in (1, 1_001, 2_001, 3_001)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert IndexStore(tmp_path).count(org_key=ORG) == 1 + 4 * 40


def live_ids(store: IndexStore) -> set[int]:
    dim = store.info(org_key=ORG).dim
    return {hit.id for hit in store.search(org_key=ORG, query_vector=np.ones(dim), k=10_000)}


def test_the_version_travels_with_the_file_through_every_write(tmp_path: Path, kind: str) -> None:
    store = IndexStore(tmp_path, approximate_threshold=THRESHOLD, compact_ratio=0.1)
    count = 60 if kind == "exact" else 400
    store.rebuild(org_key=ORG, ids=np.arange(count), vectors=unit_vectors(count, seed=1), version=7)
    store.add(org_key=ORG, ids=[count], vectors=unit_vectors(1, seed=2))
    store.remove(org_key=ORG, ids=np.arange(count // 2))  # compacts the approximate index
    info = IndexStore(tmp_path).info(org_key=ORG)
    assert (info.kind, info.tombstones, info.version) == (kind, 0, 7)


def test_apply_moves_the_file_to_the_new_version_with_the_changes(store: IndexStore, kind: str) -> None:
    ids, _ = filled(store, kind=kind)
    added = unit_vectors(2, seed=5)
    assert store.apply(
        org_key=ORG, base_version=0, version=3, add_ids=[1, 2], add_vectors=added, remove_ids=ids[:4]
    )
    assert store.version(org_key=ORG) == 3
    assert IndexStore(store.root).version(org_key=ORG) == 3
    assert live_ids(store) == (set(ids.tolist()) - set(ids[:4].tolist())) | {1, 2}
    assert store.search(org_key=ORG, query_vector=added[1], k=1)[0].id == 2


def test_apply_replays_changes_the_file_already_holds_without_harm(store: IndexStore) -> None:
    vectors = unit_vectors(4, seed=3)
    store.rebuild(org_key=ORG, ids=[1, 2, 3], vectors=vectors[:3], version=2)
    # The changes since version 1 (3 added, 9 removed, 4 added): the file holds the first two.
    assert store.apply(
        org_key=ORG, base_version=1, version=4, add_ids=[3, 4], add_vectors=vectors[2:], remove_ids=[9]
    )
    assert live_ids(store) == {1, 2, 3, 4}
    assert store.info(org_key=ORG).count == 4
    assert store.version(org_key=ORG) == 4


def test_apply_never_moves_a_file_backwards(store: IndexStore) -> None:
    store.rebuild(org_key=ORG, ids=[1, 2], vectors=unit_vectors(2, seed=3), version=5)
    assert store.apply(
        org_key=ORG, base_version=2, version=4, add_ids=[], add_vectors=np.zeros((0, DIM)), remove_ids=[1]
    )
    assert store.version(org_key=ORG) == 5
    assert live_ids(store) == {1, 2}


def test_apply_refuses_changes_that_start_after_the_file(store: IndexStore) -> None:
    store.rebuild(org_key=ORG, ids=[1, 2], vectors=unit_vectors(2, seed=3), version=1)
    assert not store.apply(
        org_key=ORG, base_version=3, version=4, add_ids=[], add_vectors=np.zeros((0, DIM)), remove_ids=[1]
    )
    assert store.version(org_key=ORG) == 1
    assert live_ids(store) == {1, 2}


def test_apply_needs_a_file_to_start_from(store: IndexStore) -> None:
    with pytest.raises(IndexMissing):
        store.apply(
            org_key=ORG,
            base_version=0,
            version=1,
            add_ids=[1],
            add_vectors=unit_vectors(1, seed=1),
            remove_ids=[],
        )
